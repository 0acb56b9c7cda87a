"""Reading the append-only annotation log: the current labels of a task at a revision."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.store.models import Annotation, Item


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


@dataclass
class LabelSnapshot:
    """A task's current labels from ``source`` as one (reading) transaction saw them, and the
    newest revision it read: a later transaction brings it up to date by reading only the rows
    after that revision (:meth:`current`), so a write transaction that needs the labels (the
    training trigger of ``POST /annotations``) does not read the whole log under the write lock."""

    task_id: int
    source: str = "human"
    labels: dict[int, list[str]] = field(default_factory=dict)
    revision: int = 0

    @classmethod
    def read(cls, session: Session, task_id: int, source: str = "human") -> LabelSnapshot:
        snap = cls(task_id, source)
        snap._apply(session)
        return snap

    def _apply(self, session: Session) -> None:
        query = (
            select(Annotation.item_id, Annotation.labels, Annotation.id)
            .where(
                Annotation.task_id == self.task_id,
                Annotation.source == self.source,
                Annotation.id > self.revision,
            )
            .order_by(Annotation.id)
        )
        for item_id, labels, rev in session.execute(query):
            if labels is None:
                self.labels.pop(item_id, None)
            else:
                self.labels[item_id] = list(labels)
            self.revision = rev

    def current(self, session: Session) -> dict[int, list[str]]:
        """What :func:`current_labels` would read in ``session`` (the rows after the snapshot
        applied in revision order: the log is append-only, so the result is the same)."""
        self._apply(session)
        return dict(self.labels)


def unlabelled_item_ids(session: Session, task_id: int) -> list[int]:
    """The readable items without a human label, most uncertain first by the freshest scores
    (unscored ones first; the ranking ``/next`` reads): re-prediction batches are cut in this
    order, so a promotion rescores first what people are about to be handed."""
    labelled = set(current_labels(session, task_id))
    ids = session.scalars(
        select(Item.id)
        .where(Item.task_id == task_id, Item.status != "failed")
        .order_by(Item.rank, Item.lottery)
    )
    return [i for i in ids if i not in labelled]
