"""Reading the append-only annotation log: the current labels of a task at a revision."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.store.models import Annotation, Task

#: The identity a human label without an annotator counts as (every such label is the same "person").
ANONYMOUS = ""


def label_revision(session: Session, task_id: int) -> int:
    """The newest annotation id of the task (0 before the first)."""
    rev = session.scalar(select(func.max(Annotation.id)).where(Annotation.task_id == task_id))
    return int(rev or 0)


def current_labels(
    session: Session,
    task_id: int,
    revision: int | None = None,
    source: str = "human",
    item_ids: Sequence[int] | None = None,
) -> dict[int, list[str]]:
    """Item id -> its latest label set from ``source`` at ``revision``; retracted items drop out."""
    return {
        i: labels
        for i, (labels, _) in labelled_at(session, task_id, revision, source, item_ids).items()
    }


def labelled_at(
    session: Session,
    task_id: int,
    revision: int | None = None,
    source: str = "human",
    item_ids: Sequence[int] | None = None,
) -> dict[int, tuple[list[str], int]]:
    """Item id -> (its latest label set, the revision that set it), at ``revision``; of the
    given items only when ``item_ids`` is given (a chunk's read, not the task's)."""
    query = (
        select(Annotation.item_id, Annotation.labels, Annotation.id)
        .where(Annotation.task_id == task_id, Annotation.source == source)
        .order_by(Annotation.id)
    )
    if revision is not None:
        query = query.where(Annotation.id <= revision)
    if item_ids is not None:
        query = query.where(Annotation.item_id.in_([int(i) for i in item_ids]))
    out: dict[int, tuple[list[str], int]] = {}
    for item_id, labels, rev in session.execute(query):
        if labels is None:
            out.pop(item_id, None)
        else:
            out[item_id] = (list(labels), rev)
    return out


@dataclass(frozen=True)
class HumanLabels:
    """A task's human labels at ``revision``: each labelled item's current labels, and the people
    whose labels it carries (a retraction clears both). Shared between threads: never mutated."""

    revision: int = 0
    labels: Mapping[int, list[str]] = field(default_factory=dict)
    people: Mapping[int, frozenset[str]] = field(default_factory=dict)

    def after(self, rows: list[tuple[int, str | None, list[str] | None, int]]) -> HumanLabels:
        """These labels with newer rows (item, annotator, labels, revision) applied in order."""
        if not rows:
            return self
        labels = dict(self.labels)
        people = dict(self.people)
        for item_id, annotator, value, _ in rows:
            if value is None:
                labels.pop(item_id, None)
                people.pop(item_id, None)
            else:
                labels[item_id] = list(value)
                who = ANONYMOUS if annotator is None else annotator
                people[item_id] = people.get(item_id, frozenset()) | {who}
        return HumanLabels(rows[-1][3], labels, people)


#: Tasks whose human labels a process keeps (the most recently read).
KEPT_TASKS = 64


class _HumanLabelCache:
    """Per process: each task's human labels as last read, brought up to date by reading only the
    rows after their revision. ``/next`` and ``POST /annotations`` need every label of the task on
    each call; without this each call read (and decoded) the whole log, the biggest share of the
    API's interpreter time under 30 annotators after the write lock (docs/BENCHMARKS.md).

    Exact because the log is append-only and every human label is inserted holding the task's
    lock (``POST /annotations``: ``lock_task``), so labels commit in revision order: a reader that
    sees a revision sees every one before it. Keyed by the store, the task and its creation time
    (a deleted task's id may come back with another task).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[str, int, datetime | None], HumanLabels] = OrderedDict()

    def read(self, session: Session, task: Task) -> HumanLabels:
        key = (str(session.get_bind().engine.url), task.id, task.created_at)
        with self._lock:
            base = self._kept.get(key, HumanLabels())
        query = (
            select(Annotation.item_id, Annotation.annotator, Annotation.labels, Annotation.id)
            .where(
                Annotation.task_id == task.id,
                Annotation.source == "human",
                Annotation.id > base.revision,
            )
            .order_by(Annotation.id)
        )
        now = base.after([(r[0], r[1], r[2], r[3]) for r in session.execute(query)])
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or kept.revision < now.revision:
                self._kept[key] = now
            self._kept.move_to_end(key)
            while len(self._kept) > KEPT_TASKS:
                self._kept.popitem(last=False)
        return now

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


HUMAN_LABELS = _HumanLabelCache()


def human_labels(session: Session, task: Task) -> HumanLabels:
    """The task's human labels as of this session's snapshot or later (see
    :class:`_HumanLabelCache`: never older than what the session sees)."""
    return HUMAN_LABELS.read(session, task)


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

    @classmethod
    def of(cls, session: Session, task: Task) -> LabelSnapshot:
        """The human labels, from this process's :func:`human_labels`."""
        got = human_labels(session, task)
        return cls(task.id, "human", dict(got.labels), got.revision)

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
