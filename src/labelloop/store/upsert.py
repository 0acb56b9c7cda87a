"""Insert-or-update, insert-if-absent and new primary keys, in the dialect of the connected database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from labelloop.store.models import AuditPick, Item, Prediction, Reservation

UPDATED = ("task_id", "version", "labels", "scores", "score", "uncertainty", "created_at")


def _insert(session: Session, table: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


def allocate_ids(session: Session, table: Table, n: int) -> list[int]:
    """``n`` new ids of ``table``'s integer key, ascending, for rows this transaction inserts
    with their ids given: a bulk insert then needs no ``RETURNING``. PostgreSQL draws them from
    the key's sequence (concurrent writers draw others); SQLite's writing transaction holds the
    database's write lock from its ``BEGIN IMMEDIATE``, so the ids after the largest are free
    until it ends (what SQLite itself would give)."""
    if n <= 0:
        return []
    key = table.c.id
    if session.get_bind().dialect.name == "postgresql":
        sequence = func.pg_get_serial_sequence(table.name, key.name)
        drawn = select(func.nextval(sequence)).select_from(func.generate_series(1, n))
        return sorted(session.execute(drawn).scalars())
    last = session.execute(select(func.max(key))).scalar() or 0
    return list(range(last + 1, last + n + 1))


def record_audit_picks(session: Session, task_id: int, item_ids: Sequence[int]) -> None:
    """Remember items handed out as random audits (a second pick of the same item is a no-op)."""
    if item_ids:
        stmt = _insert(session, AuditPick).on_conflict_do_nothing(
            index_elements=[AuditPick.item_id]
        )
        session.execute(stmt, [{"item_id": i, "task_id": task_id} for i in item_ids])


def reserve(
    session: Session, task_id: int, annotator: str, item_ids: Sequence[int], expires_at: Any
) -> None:
    """Hold items for an annotator until ``expires_at`` (an item they hold already is renewed)."""
    if item_ids:
        stmt = _insert(session, Reservation)
        stmt = stmt.on_conflict_do_update(
            index_elements=[Reservation.item_id, Reservation.annotator],
            set_={"expires_at": stmt.excluded.expires_at},
        )
        session.execute(
            stmt,
            [
                {"task_id": task_id, "item_id": i, "annotator": annotator, "expires_at": expires_at}
                for i in item_ids
            ],
        )


def upsert_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows keyed by item id; a concurrent writer of the same item never makes this fail.

    Each item's place in the ranking ``/next`` reads follows its freshest prediction
    (``Item.rank``: minus the priority; see :mod:`labelloop.loop.ranking`).
    """
    if not rows:
        return
    stmt = _insert(session, Prediction)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Prediction.item_id],
        set_={name: getattr(stmt.excluded, name) for name in UPDATED},
    )
    # A plain executemany by primary key (the ORM's bulk update by key costs twice as much in
    # Python, and every writer waits while a promotion writes a pool's ranks). Rows in item
    # order: writers of the same items (a /next scoring unscored items beside a training's
    # pre-labels) lock them in one order, so PostgreSQL never finds two deadlocked (it did at
    # 1M items, docs/BENCHMARKS.md "A large task").
    ordered = sorted(rows, key=lambda r: int(r["item_id"]))
    rank = update(Item).where(Item.id == bindparam("b_id")).values(rank=bindparam("b_rank"))
    session.flush()  # what the session holds goes first, as its own execute would flush it
    for start in range(0, len(ordered), 1000):
        chunk = ordered[start : start + 1000]
        # On the connection too: the ORM's bulk insert spent as long preparing the rows again.
        session.connection().execute(stmt, chunk)
        session.connection().execute(
            rank, [{"b_id": r["item_id"], "b_rank": -float(r["uncertainty"])} for r in chunk]
        )
