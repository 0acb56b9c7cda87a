"""The ranking ``/next`` reads: kept in the store, updated in bulk, read with ``LIMIT``.

Every item carries its place (:class:`labelloop.store.models.Item`): ``lottery`` (the task's stable
random order), ``rank`` (minus the query strategy's priority from the freshest prediction stored,
:data:`~labelloop.store.models.UNSCORED` before any) and ``covered`` (a model label stands).
Storing a prediction sets its item's rank (:func:`labelloop.store.upsert.upsert_predictions`);
applying model labels sets ``covered`` (:func:`set_covered`). Three indexes serve the three orders.

A request reads a :func:`window`: the first ``n`` items in one order, skipping a set it already
knows (the items people labelled or hold, read from the labels and the reservations, which grow
with what people do, not with the pool). It asks for ``n + len(skip)`` rows, so whatever it skips
it still has ``n``: the rows read never depend on the size of the pool.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal

from sqlalchemy import false, select, update
from sqlalchemy.orm import Session

from labelloop.store.models import Item

Order = Literal["lottery", "rank"]


def window(
    session: Session,
    task_id: int,
    n: int,
    *,
    order: Order = "lottery",
    uncovered: bool = False,
    skip: Collection[int] = (),
) -> list[int]:
    """The first ``n`` readable items of the task in ``order`` (only those without a model label
    when ``uncovered``), leaving out ``skip``."""
    return list(signed_window(session, task_id, n, order=order, uncovered=uncovered, skip=skip))


def signed_window(
    session: Session,
    task_id: int,
    n: int,
    *,
    order: Order = "lottery",
    uncovered: bool = False,
    skip: Collection[int] = (),
) -> dict[int, bytes | None]:
    """:func:`window` with each item's near-copy signature, read by the same statement (in
    order: the keys are the window)."""
    if n <= 0:
        return {}
    query = select(Item.id, Item.signature).where(Item.task_id == task_id, Item.status != "failed")
    if uncovered:
        query = query.where(Item.covered == false())
    if order == "rank":
        query = query.order_by(Item.rank, Item.lottery)
    else:
        query = query.order_by(Item.lottery)
    rows = session.execute(query.limit(n + len(skip))).all()
    return dict([(r.id, r.signature) for r in rows if r.id not in skip][:n])


def lottery_order(session: Session, item_ids: Iterable[int]) -> list[int]:
    """Items (a handful: those some people labelled) in the task's stable random order."""
    ids = list(item_ids)
    if not ids:
        return []
    return list(session.scalars(select(Item.id).where(Item.id.in_(ids)).order_by(Item.lottery)))


def set_covered(session: Session, item_ids: Iterable[int], covered: bool) -> None:
    """Model labels were applied to (or retracted from) these items: out of (or back in) the
    ranking for people."""
    rows = [{"id": int(i), "covered": covered} for i in item_ids]
    for start in range(0, len(rows), 1000):
        session.execute(update(Item), rows[start : start + 1000])
