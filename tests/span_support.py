"""A tiny synthetic NER corpus the span tests generate themselves: names, companies and places
filled into sentence templates, with their character offsets."""

from __future__ import annotations

import random
import re
from typing import Any

PEOPLE = ["Alice", "Bob", "Carol", "Dmitri", "Eve", "Fatima", "Gustav", "Hiro", "Ines", "Jamal"]
ORGS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Wonka", "Cyberdyne"]
PLACES = ["Paris", "Berlin", "Tokyo", "Lima", "Oslo", "Nairobi", "Quito", "Madrid"]
TEMPLATES = [
    "{PER} works at {ORG} in {LOC}.",
    "{ORG} hired {PER} last year.",
    "Yesterday {PER} flew to {LOC}.",
    "The office of {ORG} is in {LOC}.",
    "{PER} met the team at {ORG}.",
    "Nothing happened here today.",
]
FILL = {"PER": PEOPLE, "ORG": ORGS, "LOC": PLACES}
LABELS = ["PER", "ORG", "LOC"]


def sentence(rng: random.Random) -> tuple[str, list[dict[str, Any]]]:
    """One sentence and its spans (character offsets, end exclusive)."""
    text, spans = "", []
    for m in re.finditer(r"\{(\w+)\}|[^{]+", rng.choice(TEMPLATES)):
        if m.group(1):
            word = rng.choice(FILL[m.group(1)])
            spans.append({"start": len(text), "end": len(text) + len(word), "label": m.group(1)})
            text += word
        else:
            text += m.group(0)
    return text, spans


def corpus(n: int, seed: int = 0) -> list[tuple[str, list[dict[str, Any]]]]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]
