"""The store's tables.

Annotations are append-only: a correction, a retraction or a model label is a new row, and the
row id is the task's label *revision*. A training job snapshots the labels at a revision, so what a
model was trained on can always be reconstructed. Everything is keyed by task.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JobState(StrEnum):
    """Where a job is in its life (``queued → running → done | failed``; a job whose worker died
    goes back from ``running`` to run again). The stored values are these strings; the transitions
    are the helpers of :mod:`labelloop.jobs.state`."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


#: States of a job that is not over: resumed at start, at most one such training job per task.
ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
#: States of a job that is over: nothing runs it again.
FINISHED_JOB_STATES = (JobState.DONE, JobState.FAILED)
_ACTIVE_TRAIN = text(
    f"kind = 'train' AND state IN ({', '.join(repr(s.value) for s in ACTIVE_JOB_STATES)})"
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Task(Base):
    __tablename__ = "tasks"
    # Never reuse the id of a deleted task: folders and caches are keyed by it.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(64))
    extra: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[Any]] = mapped_column(JSON)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    served_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A training trigger that arrived while a job was active: exactly one more run follows it.
    train_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    # Counts promotions (rollbacks included): keys the re-prediction jobs of each one.
    promotions: Mapped[int] = mapped_column(Integer, default=0)
    # Random per-task salt: stable hashes (held-out split, tie breaks) differ between tasks.
    salt: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Set when the task is archived: kept with its data, but no longer handed out to label.
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


#: ``Item.rank`` of an item no model scored yet: before every scored one (nothing is known of it).
UNSCORED = -1.0e300


def lottery_of(salt: str, external_id: str | None, data: str) -> int:
    """An item's place in its task's stable random order: a hash of the task's salt (random, or
    ``seed-<n>`` when the policy fixes a seed, so a seed gives the same order again) and of what
    the item is, so it is known when the row is inserted."""
    digest = hashlib.sha256(f"{salt}\0{external_id}\0{data}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def _default_lottery(context: Any) -> int:
    """Rows inserted without the service's bulk path (which passes the task's salt): the salt is
    read from the task row on the same connection."""
    row = context.get_current_parameters()
    salt = context.connection.execute(
        select(Task.salt).where(Task.id == row["task_id"])
    ).scalar_one()
    return lottery_of(salt, row.get("external_id"), row["data"])


class Item(Base):
    """An item of a task, with its place in the ranking ``/next`` reads with ``LIMIT`` (the three
    ``ix_items_*_rank``/``lottery`` indexes; see :mod:`labelloop.loop.ranking`)."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("task_id", "external_id", name="uq_items_task_external"),
        Index("ix_items_task_status", "task_id", "status"),
        Index("ix_items_task_lottery", "task_id", "lottery"),
        Index("ix_items_task_covered_lottery", "task_id", "covered", "lottery"),
        # ``id`` last (implicit on SQLite): the rescoring's keyset position is one row, and
        # PostgreSQL reads it in order without a sort (labelloop.loop.rescoring).
        Index("ix_items_task_covered_rank", "task_id", "covered", "rank", "lottery", "id"),
        # A rescoring's tail, stalest first (labelloop.loop.rescoring).
        Index("ix_items_task_rescored", "task_id", "rescored", "covered", "rank", "lottery", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    data: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|ready|failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The task's stable random order (audits, and every item before the first model).
    lottery: Mapped[int] = mapped_column(BigInteger, default=_default_lottery)
    #: Where the freshest scores put the item, smaller first: minus the query strategy's priority
    #: from the newest prediction stored, :data:`UNSCORED` before any.
    rank: Mapped[float] = mapped_column(Float, default=UNSCORED)
    #: Whether a model label stands for the item (auto-labelling): no longer ranked for people.
    covered: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Its near-copy signature (:func:`labelloop.loop.selection.signatures`), set when it is
    #: featurized: ``/next`` keeps near-copies out of a batch with it, reading no features.
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: The promotion (``Task.promotions``) whose rescoring last re-predicted the item, 0 before
    #: any: a rescoring skips what it did already, and its tail goes stalest first.
    rescored: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Annotation(Base):
    """One submitted label set for one item. Never updated, never deleted (except with its task)."""

    __tablename__ = "annotations"
    __table_args__ = (
        Index("ix_annotations_task_item", "task_id", "item_id"),
        # Human labels read without the model labels of an auto-labelled pool.
        Index("ix_annotations_task_source_id", "task_id", "source", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    # None means the earlier label of this item was retracted (e.g. deleted in Label Studio).
    labels: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="human")  # human|model
    annotator: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    shown_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    shown_labels: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # True when the label differs from the pre-label shown (or none was shown): the edit rate.
    edited: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Prediction(Base):
    """The current pre-label of an item, from one model version, with the scores behind it."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_task_uncertainty", "task_id", "uncertainty"),)

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list[Any]] = mapped_column(JSON)
    scores: Mapped[list[Any]] = mapped_column(JSON)
    score: Mapped[float] = mapped_column(Float)
    uncertainty: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """A trained model: kept with its metrics whether or not it was promoted."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("task_id", "version", name="uq_model_versions_task_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    job_key: Mapped[str] = mapped_column(String(200), unique=True)
    learner: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="building")  # building|ready|failed
    label_revision: Mapped[int] = mapped_column(Integer)
    n_labels: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Job(Base):
    """A unit of background work. Its key makes it idempotent; its state lives here, not in a queue."""

    __tablename__ = "jobs"
    __table_args__ = (
        # At most one queued-or-running training job per task, enforced by the database itself.
        Index(
            "uq_jobs_one_active_train",
            "task_id",
            unique=True,
            sqlite_where=_ACTIVE_TRAIN,
            postgresql_where=_ACTIVE_TRAIN,
        ),
        Index("ix_jobs_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # train|featurize|predict|autolabel
    key: Mapped[str] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditPick(Base):
    """An item ``/next`` handed out at random: its human label is unbiased held-out evidence."""

    __tablename__ = "audit_picks"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    picked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabelStudioProject(Base):
    """A Label Studio project connected as an ML backend, and the labelloop task that serves it.

    The token Label Studio hands over at setup is never stored here (see ``labelstudio.links``).
    """

    __tablename__ = "labelstudio_projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Label Studio's project id (the part of its ``"<id>.<created timestamp>"`` uid before the dot).
    project: Mapped[str] = mapped_column(String(64), unique=True)
    #: The whole uid: a project id reused by a fresh Label Studio gets a new task.
    uid: Mapped[str | None] = mapped_column(String(100), nullable=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    #: Label Studio's base URL as given at setup (media links are resolved against it).
    url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    #: The parsed labelling config: from/to names, object type, data key, labels, multi-label.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabelStudioAnnotation(Base):
    """Which item a Label Studio annotation labelled: deletions arrive with annotation ids only."""

    __tablename__ = "labelstudio_annotations"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("labelstudio_projects.id", ondelete="CASCADE"), primary_key=True
    )
    annotation_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)


class Reservation(Base):
    """An item ``/next`` handed to an annotator: nobody else gets it until the lease ends or they
    label it (with an overlap of k, at most k people hold or labelled it)."""

    __tablename__ = "reservations"
    __table_args__ = (
        UniqueConstraint("item_id", "annotator", name="uq_reservations_item_annotator"),
        Index("ix_reservations_task_expires", "task_id", "expires_at"),
    )

    #: Also the order the annotator was given their items in.
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    annotator: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotatorToken(Base):
    """A token that names its annotator: it may read and label, nothing else. Only its SHA-256 is
    kept (the token is shown once, when it is created)."""

    __tablename__ = "annotator_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
