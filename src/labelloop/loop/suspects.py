"""Label-error flags: human labels the model confidently disagrees with, out of sample.

Confident learning: every human label has an out-of-sample score vector from cross-validation (a
model that did not see it). A class's threshold is the mean score the model gives that class on the
items labelled with it (its self-confidence). Counting, for each given label, the classes items
confidently belong to (the *confident joint*) estimates how many items given label g truly belong to
j; that many items given g, those the model most prefers j for, are flagged ("prune by noise
rate"). Flags are ranked by self-confidence: how little the model believes the given label.

Text spans (:func:`find_span_suspects`): a labelled text is flagged when its out-of-sample spans
differ from the labelled ones and the model is sure of the difference: a span it proposes that the
label lacks, with a beam probability of at least :data:`SPAN_SURE`, or a labelled span it does not
propose while every token of the text is that certain.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Suspect:
    position: int
    #: The labels given and suggested (lists of labels; for text spans, lists of spans).
    given: list[Any]
    suggested: list[Any]
    score: float


#: Labels per class seen before any flag is raised: with fewer, the model's disagreement says
#: more about the model than about the labels.
MIN_PER_CLASS = 5


def enough_labels(Y: np.ndarray) -> bool:
    seen = int((Y.sum(axis=0) > 0).sum())
    return len(Y) >= MIN_PER_CLASS * max(seen, 2)


def find_suspects(
    scores: np.ndarray, Y: np.ndarray, labels: Sequence[str], multi_label: bool
) -> list[Suspect]:
    """Flagged positions, most suspicious first (none while there are too few labels to judge)."""
    if len(Y) == 0 or not enough_labels(Y):
        return []
    if multi_label:
        return _multi_label(scores, Y, labels)
    given = Y.argmax(axis=1)
    n, k = Y.shape
    thresholds = np.full(k, np.inf)
    for j in range(k):
        mine = given == j
        if mine.any():
            thresholds[j] = scores[mine, j].mean()
    # The confident joint: given label x the class each item confidently belongs to.
    joint = np.zeros((k, k))
    for i in range(n):
        confident = np.flatnonzero(scores[i] >= thresholds)
        if len(confident):
            joint[given[i], confident[np.argmax(scores[i, confident])]] += 1
    # Calibrated so each row holds as many items as were given that label.
    counts = np.bincount(given, minlength=k)
    rows = joint.sum(axis=1, keepdims=True)
    joint = np.where(rows > 0, joint / np.where(rows == 0, 1, rows) * counts[:, None], 0.0)
    # Prune by noise rate: for each (given g, true j) off the diagonal, the round(joint[g, j])
    # items given g whose score for j most exceeds their score for g.
    flagged: dict[int, int] = {}
    for g in range(k):
        mine = np.flatnonzero(given == g)
        for j in range(k):
            m = round(float(joint[g, j])) if j != g else 0
            if m == 0 or len(mine) == 0:
                continue
            margin = scores[mine, j] - scores[mine, g]
            for pos in mine[np.argsort(-margin, kind="stable")[:m]].tolist():
                if scores[pos, j] > scores[pos, g] and (
                    pos not in flagged or scores[pos, j] > scores[pos, flagged[pos]]
                ):
                    flagged[pos] = j
    out = [
        Suspect(
            pos,
            [labels[int(given[pos])]],
            [labels[j]],
            # Ranked by self-confidence: the less the model believes the given label, the
            # likelier it is wrong (measured: the best precision at the top of the list).
            1.0 - float(scores[pos, given[pos]]),
        )
        for pos, j in flagged.items()
    ]
    return sorted(out, key=lambda s: (-s.score, s.position))


def _multi_label(scores: np.ndarray, Y: np.ndarray, labels: Sequence[str]) -> list[Suspect]:
    flags: dict[int, list[int]] = defaultdict(list)
    strength: dict[int, float] = defaultdict(float)
    for j in range(Y.shape[1]):
        pos, neg = Y[:, j] == 1, Y[:, j] == 0
        t_pos = scores[pos, j].mean() if pos.any() else np.inf
        t_neg = (1 - scores[neg, j]).mean() if neg.any() else np.inf
        for k in np.flatnonzero(pos & (1 - scores[:, j] >= t_neg) & (scores[:, j] < 0.5)).tolist():
            flags[k].append(j)
            strength[k] = max(strength[k], 1.0 - 2 * float(scores[k, j]))
        for k in np.flatnonzero(neg & (scores[:, j] >= t_pos) & (scores[:, j] > 0.5)).tolist():
            flags[k].append(j)
            strength[k] = max(strength[k], 2 * float(scores[k, j]) - 1.0)
    out = []
    for pos_i, cols in flags.items():
        given = [labels[int(j)] for j in np.flatnonzero(Y[pos_i])]
        suggested = set(given) ^ {labels[j] for j in cols}
        out.append(
            Suspect(pos_i, given, sorted(suggested, key=list(labels).index), strength[pos_i])
        )
    return sorted(out, key=lambda s: -s.score)


#: How sure an out-of-sample span model must be of a difference to flag a labelled text.
SPAN_SURE = 0.8


def find_span_suspects(answers: np.ndarray, given: Sequence[list[dict[str, Any]]]) -> list[Suspect]:
    """Labelled texts whose out-of-sample spans differ from the labelled ones, the model sure of
    the difference, most certain first (none while there are too few labels to judge)."""
    labels_seen = {str(s["label"]) for value in given for s in value}
    if len(given) < MIN_PER_CLASS * max(len(labels_seen), 2):
        return []
    out = []
    for pos, (answer, value) in enumerate(zip(answers, given, strict=True)):
        proposed = {(s["start"], s["end"], s["label"]): float(s["score"]) for s in answer["spans"]}
        labelled = {(s["start"], s["end"], s["label"]) for s in value}
        added = [p for key, p in proposed.items() if key not in labelled]
        missed = labelled - set(proposed)
        strength = max([*added, float(answer["certainty"]) if missed else 0.0])
        if strength >= SPAN_SURE:
            suggested = [{"start": a, "end": b, "label": label} for a, b, label in sorted(proposed)]
            out.append(Suspect(pos, list(value), suggested, strength))
    return sorted(out, key=lambda s: (-s.score, s.position))


def annotator_agreement(
    labels_by_item: dict[int, dict[str, list[str]]],
) -> list[dict[str, object]]:
    """Per annotator: how often their label matched other annotators' on items they shared."""
    agree: dict[str, int] = defaultdict(int)
    compared: dict[str, int] = defaultdict(int)
    items: dict[str, int] = defaultdict(int)
    for by_annotator in labels_by_item.values():
        if len(by_annotator) < 2:
            continue
        for who, mine in by_annotator.items():
            items[who] += 1
            for other, theirs in by_annotator.items():
                if other != who:
                    compared[who] += 1
                    agree[who] += sorted(mine) == sorted(theirs)
    return [
        {
            "annotator": who,
            "shared_items": items[who],
            "comparisons": compared[who],
            "agreement": agree[who] / compared[who],
        }
        for who in sorted(compared)
    ]
