"""Who holds which item: ``/next`` reserves what it hands out, so annotators never share an item.

An item ``/next`` hands to an annotator is theirs for a lease (``LABELLOOP_RESERVATION_LEASE_S``,
10 minutes by default): nobody else gets it until the lease ends or they label it, and when they ask
again they get their own unexpired items back first (renewed). With a task's ``policy.overlap`` of
k, an item is handed out until k different people labelled it, at most k at a time.

Choosing is done from a snapshot, outside any lock (a strategy may featurize); the claim
(:func:`hand_out`) is one short transaction that holds the task's row lock (:func:`lock`:
``SELECT … FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), reads the reservations and
the labels that arrived since the snapshot, and reserves the first candidates still free: two
claims of the same task never interleave, so no item goes to more people than the overlap allows.
What the items hold and whether they were audits is read outside it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from labelloop.errors import NotFound
from labelloop.loop.labels import ANONYMOUS as ANONYMOUS
from labelloop.loop.labels import human_labels
from labelloop.runtime import Runtime
from labelloop.service.common import get_task_row
from labelloop.store.models import Annotation, AuditPick, Reservation, Task
from labelloop.store.upsert import record_audit_picks, reserve


def person(annotator: str | None) -> str:
    return ANONYMOUS if annotator is None else annotator


def apply_labels(
    people: dict[int, set[str]], rows: Iterable[tuple[int, str | None, object]]
) -> None:
    """Update ``people`` (item -> who labelled it now) with human annotations in revision order.

    A retraction clears the item (as :func:`labelloop.loop.labels.current_labels` drops it): an
    item has a label from the people whose labels came after its last retraction.
    """
    for item_id, annotator, labels in rows:
        if labels is None:
            people.pop(item_id, None)
        else:
            people.setdefault(item_id, set()).add(person(annotator))


def labellers(session: Session, task_id: int, after: int = 0) -> dict[int, set[str]]:
    """Item -> the people whose labels it carries now (items without a human label are absent)."""
    people: dict[int, set[str]] = {}
    apply_labels(people, _human_rows(session, task_id, after))
    return people


def labellers_now(session: Session, task: Task) -> tuple[Mapping[int, AbstractSet[str]], int]:
    """:func:`labellers` (shared: not to be changed), and the revision of the newest human label
    read (0 before any): the snapshot :func:`claim` reads the labels that arrived after. From the
    process's :func:`labelloop.loop.labels.human_labels`: the rows after its revision are read."""
    got = human_labels(session, task)
    return got.people, got.revision


def _human_rows(
    session: Session, task_id: int, after: int, with_revision: bool = False
) -> Sequence[Any]:
    """Human annotations in revision order (through ``ix_annotations_task_source_id``: the model
    labels of an auto-labelled pool are never read)."""
    columns = [Annotation.item_id, Annotation.annotator, Annotation.labels]
    if with_revision:
        columns.append(Annotation.id)
    query = (
        select(*columns)
        .where(Annotation.task_id == task_id, Annotation.source == "human")
        .order_by(Annotation.id)
    )
    if after:
        query = query.where(Annotation.id > after)
    return session.execute(query).all()


def held(session: Session, task_id: int, now: datetime) -> dict[int, dict[str, int]]:
    """Item -> annotator -> reservation id, for the task's unexpired reservations (few rows: what
    annotators hold right now, read through the ``(task_id, expires_at)`` index)."""
    out: dict[int, dict[str, int]] = {}
    rows = session.execute(
        select(Reservation.item_id, Reservation.annotator, Reservation.id).where(
            Reservation.task_id == task_id, Reservation.expires_at > now
        )
    ).all()
    for item_id, annotator, rid in rows:
        out.setdefault(item_id, {})[annotator] = rid
    return out


@dataclass
class Holdings:
    """Who labelled and who holds the task's items, seen from one annotator (``me``; None for a
    caller that reserves nothing)."""

    overlap: int
    me: str | None
    people: Mapping[int, AbstractSet[str]]
    holders: dict[int, dict[str, int]] = field(default_factory=dict)

    def free(self, item_id: int) -> bool:
        """Whether ``me`` may be handed the item: they have not labelled it, and the people who
        labelled or hold it (``me`` aside) leave room within the overlap."""
        done = self.people.get(item_id, set())
        if self.me is not None and self.me in done:
            return False
        others = sum(1 for who in self.holders.get(item_id, {}) if who != self.me)
        return len(done) + others < self.overlap

    def mine(self) -> list[int]:
        """The items ``me`` holds and may still label, in the order they were handed out."""
        if self.me is None:
            return []
        own = [(h[self.me], i) for i, h in self.holders.items() if self.me in h]
        return [i for _, i in sorted(own) if self.free(i)]

    def started(self, order: Sequence[int]) -> list[int]:
        """Items some but fewer than ``overlap`` people labelled, free for ``me``, in ``order``."""
        if self.overlap <= 1:
            return []
        return [i for i in order if 0 < len(self.people.get(i, ())) < self.overlap and self.free(i)]


def claim(
    session: Session,
    task_id: int,
    holdings: Holdings,
    revision: int,
    candidates: Sequence[int],
    limit: int,
    now: datetime,
    expires_at: datetime,
) -> list[int]:
    """Reserve for ``holdings.me`` the first ``limit`` candidates that are still free.

    Runs in the caller's transaction, which must hold the task's lock (``lock_task``): it reads the
    reservations and the labels that arrived after ``revision`` afresh, so what another annotator
    claimed or labelled since the snapshot is not handed out again.
    """
    assert holdings.me is not None
    session.execute(
        delete(Reservation).where(Reservation.task_id == task_id, Reservation.expires_at <= now)
    )
    people = dict(holdings.people)  # a shallow copy: the sets are replaced, never changed
    for item_id, annotator, labels in _human_rows(session, task_id, revision):
        if labels is None:
            people.pop(item_id, None)
        else:
            people[item_id] = {*people.get(item_id, ()), person(annotator)}
    fresh = Holdings(holdings.overlap, holdings.me, people, held(session, task_id, now))
    chosen: list[int] = []
    seen: set[int] = set()
    for item_id in candidates:
        if len(chosen) == limit:
            break
        if item_id in seen:
            continue
        seen.add(item_id)
        if fresh.free(item_id):
            chosen.append(item_id)
    reserve(session, task_id, holdings.me, chosen, expires_at)
    return chosen


def lock(session: Session, task_id: int) -> bool:
    """Take the task's lock (as :func:`labelloop.loop.scheduling.lock_task`, without loading the
    row: the first statement of the claim's transaction, on SQLite its ``BEGIN IMMEDIATE``);
    False when there is no such task."""
    found = session.scalar(select(Task.id).where(Task.id == task_id).with_for_update())
    return found is not None


def hand_out(
    rt: Runtime,
    task_id: int,
    holdings: Holdings,
    revision: int,
    candidates: Sequence[int],
    limit: int,
    now: datetime,
    expires_at: datetime,
    audits: Collection[int],
) -> list[int]:
    """The write half of ``/next``: reserve (with ``holdings.me``) the first ``limit`` candidates
    still free and record the picked audits among them; what is handed out.

    Everything else ``/next`` needs is read before or after, beside any writer: this transaction
    holds the store's write lock (SQLite: the one all writers share) for the claim alone. Without
    an annotator nothing is reserved, and it writes (takes the lock) only to record audits.
    """
    if holdings.me is None:
        chosen = list(candidates[:limit])
        picked = [i for i in chosen if i in audits]
        if picked:
            with rt.session() as s:
                record_audit_picks(s, task_id, picked)
        return chosen
    with rt.session() as s:
        if not lock(s, task_id):
            raise NotFound(f"no task {task_id}")
        chosen = claim(s, task_id, holdings, revision, candidates, limit, now, expires_at)
        record_audit_picks(s, task_id, [i for i in chosen if i in audits])
    return chosen


def audits_among(session: Session, item_ids: Sequence[int]) -> set[int]:
    """The items that were ever handed out as random audits (their labels are held-out evidence,
    so they are shown without a pre-label whoever gets them)."""
    if not item_ids:
        return set()
    return set(session.scalars(select(AuditPick.item_id).where(AuditPick.item_id.in_(item_ids))))


def release(session: Session, task_id: int, labelled: Mapping[str, Sequence[int]]) -> None:
    """Labelling an item releases the labeller's reservation of it."""
    for annotator, item_ids in labelled.items():
        if item_ids:
            session.execute(
                delete(Reservation).where(
                    Reservation.task_id == task_id,
                    Reservation.annotator == annotator,
                    Reservation.item_id.in_(list(item_ids)),
                )
            )


def release_all(session: Session, task_id: int, annotator: str) -> int:
    """Give back every item an annotator holds in a task (a page that closes); how many."""
    result = session.execute(
        delete(Reservation).where(
            Reservation.task_id == task_id, Reservation.annotator == annotator
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def give_back(rt: Runtime, task_id: int, annotator: str | None) -> dict[str, int]:
    """Release ``annotator``'s reservations of a task (every one of them when None)."""
    with rt.session() as s:
        get_task_row(s, task_id)
        if annotator is None:
            result = s.execute(delete(Reservation).where(Reservation.task_id == task_id))
            return {"released": int(getattr(result, "rowcount", 0) or 0)}
        return {"released": release_all(s, task_id, annotator)}
