"""Label Studio projects and annotation ids

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "labelstudio_projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("uid", sa.String(length=100), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_labelstudio_projects_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labelstudio_projects")),
        sa.UniqueConstraint("project", name=op.f("uq_labelstudio_projects_project")),
    )
    with op.batch_alter_table("labelstudio_projects", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labelstudio_projects_task_id"), ["task_id"], unique=False
        )
    op.create_table(
        "labelstudio_annotations",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
            name=op.f("fk_labelstudio_annotations_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["labelstudio_projects.id"],
            name=op.f("fk_labelstudio_annotations_project_id_labelstudio_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "annotation_id", name=op.f("pk_labelstudio_annotations")
        ),
    )
    with op.batch_alter_table("labelstudio_annotations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labelstudio_annotations_item_id"), ["item_id"], unique=False
        )


def downgrade() -> None:
    op.drop_table("labelstudio_annotations")
    op.drop_table("labelstudio_projects")
