"""Reading the append-only annotation log: the current labels of a task at a revision."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.store.models import Annotation


def label_revision(session: Session, task_id: int) -> int:
    """The newest annotation id of the task (0 before the first)."""
    rev = session.scalar(select(func.max(Annotation.id)).where(Annotation.task_id == task_id))
    return int(rev or 0)


def current_labels(
    session: Session, task_id: int, revision: int | None = None, source: str = "human"
) -> dict[int, list[str]]:
    """Item id -> its latest label set from ``source`` at ``revision``; retracted items drop out."""
    return {i: labels for i, (labels, _) in labelled_at(session, task_id, revision, source).items()}


def labelled_at(
    session: Session, task_id: int, revision: int | None = None, source: str = "human"
) -> dict[int, tuple[list[str], int]]:
    """Item id -> (its latest label set, the revision that set it), at ``revision``."""
    query = (
        select(Annotation.item_id, Annotation.labels, Annotation.id)
        .where(Annotation.task_id == task_id, Annotation.source == source)
        .order_by(Annotation.id)
    )
    if revision is not None:
        query = query.where(Annotation.id <= revision)
    out: dict[int, tuple[list[str], int]] = {}
    for item_id, labels, rev in session.execute(query):
        if labels is None:
            out.pop(item_id, None)
        else:
            out[item_id] = (list(labels), rev)
    return out


def indicator(label_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """Indicator matrix (items x labels) of label sets over the task's label list."""
    index = {label: j for j, label in enumerate(labels)}
    Y = np.zeros((len(label_sets), len(labels)), dtype=np.int8)
    for i, ls in enumerate(label_sets):
        for label in ls:
            Y[i, index[label]] = 1
    return Y


def decide(scores: np.ndarray, labels: Sequence[str], multi_label: bool) -> list[list[str]]:
    """The label set a model proposes for each row of scores."""
    if multi_label:
        return [[labels[j] for j in np.flatnonzero(row >= 0.5).tolist()] for row in scores]
    return [[labels[int(j)]] for j in scores.argmax(axis=1).tolist()]


def top_score(scores: np.ndarray, multi_label: bool) -> np.ndarray:
    """Confidence of the proposed label set: top probability, or the weakest per-label decision."""
    if multi_label:
        return np.min(np.maximum(scores, 1.0 - scores), axis=1)  # type: ignore[no-any-return]
    return scores.max(axis=1)  # type: ignore[no-any-return]


def same_labels(a: Sequence[Any] | None, b: Sequence[Any] | None) -> bool:
    return a is not None and b is not None and sorted(a) == sorted(b)
