"""Insert-or-update and insert-if-absent, in the dialect of the connected database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from labelloop.store.models import AuditPick, Prediction

UPDATED = ("task_id", "version", "labels", "scores", "score", "uncertainty", "created_at")


def _insert(session: Session, table: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


def record_audit_picks(session: Session, task_id: int, item_ids: Sequence[int]) -> None:
    """Remember items handed out as random audits (a second pick of the same item is a no-op)."""
    if item_ids:
        stmt = _insert(session, AuditPick).on_conflict_do_nothing(
            index_elements=[AuditPick.item_id]
        )
        session.execute(stmt, [{"item_id": i, "task_id": task_id} for i in item_ids])


def upsert_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows keyed by item id; a concurrent writer of the same item never makes this fail."""
    if not rows:
        return
    stmt = _insert(session, Prediction)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Prediction.item_id],
        set_={name: getattr(stmt.excluded, name) for name in UPDATED},
    )
    for start in range(0, len(rows), 1000):
        session.execute(stmt, list(rows[start : start + 1000]))
