"""The benchmark data sets: digits (written as PNG files), TREC-6 and SMS spam from ../shared/datasets."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from labelloop.demo import write_digits

SHARED = Path(
    os.environ.get(
        "LABELLOOP_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
)


@dataclass
class Dataset:
    name: str
    category: str
    labels: list[str]
    data: list[str]
    truth: list[str]


def digits(folder: Path) -> Dataset:
    pairs = write_digits(folder)
    return Dataset(
        "digits",
        "image-classification",
        [str(d) for d in range(10)],
        [str(p) for p, _ in pairs],
        [label for _, label in pairs],
    )


def trec(path: Path | None = None) -> Dataset:
    path = path or SHARED / "trec" / "train_5500.label"
    data, truth = [], []
    for line in path.read_bytes().decode("latin-1").splitlines():
        if not line.strip():
            continue
        head, text = line.split(" ", 1)
        data.append(text.strip())
        truth.append(head.split(":", 1)[0])
    return Dataset("trec6", "text-classification", sorted(set(truth)), data, truth)


def sms(path: Path | None = None) -> Dataset:
    path = path or SHARED / "sms_spam.tsv"
    data, truth = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            data.append(row["SMS"])
            truth.append(row["Label"])
    return Dataset("sms", "text-classification", sorted(set(truth)), data, truth)


@dataclass
class SpanDataset:
    """Sentences with their entities: ``spans[i]`` are ``{"start", "end", "label"}`` over
    ``texts[i]`` (character offsets, end exclusive)."""

    name: str
    labels: list[str]
    texts: list[str]
    spans: list[list[dict[str, object]]]


#: Where the NER bench reads its corpus unless told (docs/BENCHMARKS.md names its repository).
NER_CORPUS = os.environ.get("LABELLOOP_NER_CORPUS")


def conll_ner(path: Path | str | None = None, name: str = "conll2003") -> SpanDataset:
    """A CoNLL-format NER file (CoNLL-2003's ``train.txt``): a token a line with its NER tag in
    the last column, a blank line between sentences, ``-DOCSTART-`` lines between documents.

    A sentence's text is its tokens joined by single spaces; an entity starts at a ``B-`` tag, or
    at an ``I-`` tag that does not continue an entity of its label (the original IOB1 files)."""
    if path is None and NER_CORPUS is None:
        raise SystemExit(
            "give the corpus: --corpus FILE or LABELLOOP_NER_CORPUS (docs/BENCHMARKS.md says "
            "which repository commits it)"
        )
    texts: list[str] = []
    spans: list[list[dict[str, object]]] = []
    tokens: list[tuple[str, str]] = []

    def sentence() -> None:
        if not tokens:
            return
        text, found, at = "", [], 0
        current: dict[str, object] | None = None
        for word, tag in tokens:
            start = at + (1 if text else 0)
            text = f"{text} {word}" if text else word
            at = len(text)
            kind, _, label = tag.partition("-")
            continues = current is not None and kind == "I" and current["label"] == label
            if continues and current is not None:
                current["end"] = at
            elif kind in ("B", "I") and label:
                current = {"start": start, "end": at, "label": label}
                found.append(current)
            else:
                current = None
        texts.append(text)
        spans.append(found)
        tokens.clear()

    source = Path(path if path is not None else str(NER_CORPUS))
    for line in source.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            sentence()
            continue
        tokens.append((parts[0], parts[-1]))
    sentence()
    labels = sorted({str(s["label"]) for found in spans for s in found})
    return SpanDataset(name, labels, texts, spans)
