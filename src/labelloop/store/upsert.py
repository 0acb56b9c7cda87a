"""Insert-or-update for predictions, in the dialect of the connected database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from labelloop.store.models import Prediction

UPDATED = ("task_id", "version", "labels", "scores", "score", "uncertainty", "created_at")


def upsert_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows keyed by item id; a concurrent writer of the same item never makes this fail."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(Prediction)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(Prediction)  # type: ignore[assignment]
    stmt = stmt.on_conflict_do_update(
        index_elements=[Prediction.item_id],
        set_={name: getattr(stmt.excluded, name) for name in UPDATED},
    )
    for start in range(0, len(rows), 1000):
        session.execute(stmt, list(rows[start : start + 1000]))
