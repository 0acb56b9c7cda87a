"""the promotion whose rescoring last re-predicted each item: items.rescored (and the ranking's
index ends with the id)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing items count as rescored by no promotion: the next rescoring's tail takes them
    # (after its head), as it takes every item it has not rescored itself.
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rescored", sa.Integer(), server_default="0", nullable=False))
        # The ranking's index ends with the id: a rescoring's position (covered, rank, lottery,
        # id) is then an index condition on PostgreSQL, read in order without a sort.
        batch_op.drop_index("ix_items_task_covered_rank")
        batch_op.create_index(
            "ix_items_task_covered_rank", ["task_id", "covered", "rank", "lottery", "id"]
        )
        batch_op.create_index(
            "ix_items_task_rescored",
            ["task_id", "rescored", "covered", "rank", "lottery", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("ix_items_task_rescored")
        batch_op.drop_column("rescored")
        batch_op.drop_index("ix_items_task_covered_rank")
        batch_op.create_index(
            "ix_items_task_covered_rank", ["task_id", "covered", "rank", "lottery"]
        )
