"""the ranking /next reads with LIMIT: items.lottery, items.rank, items.covered

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from labelloop.store.models import UNSCORED, lottery_of

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5000


def _backfill() -> None:
    """Existing items get their place: lottery from what they are, rank from their stored
    prediction, covered from the model labels standing now."""
    conn = op.get_bind()
    items = sa.table(
        "items",
        sa.column("id", sa.Integer),
        sa.column("task_id", sa.Integer),
        sa.column("external_id", sa.String),
        sa.column("data", sa.Text),
        sa.column("lottery", sa.BigInteger),
        sa.column("rank", sa.Float),
        sa.column("covered", sa.Boolean),
    )
    tasks = sa.table("tasks", sa.column("id", sa.Integer), sa.column("salt", sa.String))
    rows = conn.execute(
        sa.select(items.c.id, tasks.c.salt, items.c.external_id, items.c.data).join(
            tasks, tasks.c.id == items.c.task_id
        )
    )
    batch: list[dict[str, object]] = []
    update = (
        items.update().where(items.c.id == sa.bindparam("b_id")).values(lottery=sa.bindparam("lot"))
    )
    for r in rows.fetchall():
        batch.append({"b_id": r.id, "lot": lottery_of(r.salt, r.external_id, r.data)})
        if len(batch) == BATCH:
            conn.execute(update, batch)
            batch = []
    if batch:
        conn.execute(update, batch)
    conn.execute(
        sa.text(
            "UPDATE items SET rank = -(SELECT p.uncertainty FROM predictions p "
            "WHERE p.item_id = items.id) "
            "WHERE EXISTS (SELECT 1 FROM predictions p WHERE p.item_id = items.id)"
        )
    )
    standing: dict[int, bool] = {}
    for item_id, labels in conn.execute(
        sa.text("SELECT item_id, labels FROM annotations WHERE source = 'model' ORDER BY id")
    ):
        standing[item_id] = labels is not None
    covered = [{"b_id": i} for i, on in standing.items() if on]
    if covered:
        conn.execute(
            items.update().where(items.c.id == sa.bindparam("b_id")).values(covered=True), covered
        )


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lottery", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("rank", sa.Float(), nullable=False, server_default=str(UNSCORED))
        )
        batch_op.add_column(
            sa.Column("covered", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    _backfill()
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.alter_column("lottery", existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column("rank", existing_type=sa.Float(), server_default=None)
        batch_op.alter_column("covered", existing_type=sa.Boolean(), server_default=None)
        batch_op.create_index("ix_items_task_lottery", ["task_id", "lottery"], unique=False)
        batch_op.create_index(
            "ix_items_task_covered_lottery", ["task_id", "covered", "lottery"], unique=False
        )
        batch_op.create_index(
            "ix_items_task_covered_rank", ["task_id", "covered", "rank", "lottery"], unique=False
        )
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_annotations_task_source_id", ["task_id", "source", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_index("ix_annotations_task_source_id")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("ix_items_task_covered_rank")
        batch_op.drop_index("ix_items_task_covered_lottery")
        batch_op.drop_index("ix_items_task_lottery")
        batch_op.drop_column("covered")
        batch_op.drop_column("rank")
        batch_op.drop_column("lottery")
