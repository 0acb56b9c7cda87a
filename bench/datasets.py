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
