"""Creating, reading and deleting tasks."""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from labelloop.errors import InvalidInput
from labelloop.learners.registry import CATEGORIES, EXTRAS, check_params
from labelloop.loop.cache import FEATURES
from labelloop.loop.labels import current_labels
from labelloop.loop.policy import Policy
from labelloop.loop.scheduling import active_training
from labelloop.runtime import Runtime
from labelloop.service.common import get_task_row
from labelloop.store.models import Item, ModelVersion, Task


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    category: str = Field(description=f"one of {', '.join(CATEGORIES)}")
    extra: str = Field(default="multi-class", description=f"one of {', '.join(EXTRAS)}")
    labels: list[str] = Field(min_length=1, max_length=10_000)
    policy: Policy = Field(default_factory=Policy)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        cleaned = [label.strip() for label in labels]
        if any(not label for label in cleaned):
            raise ValueError("labels must be non-empty strings")
        if any(len(label) > 200 for label in cleaned):
            raise ValueError("a label is longer than 200 characters")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("labels must be unique")
        return cleaned


def summary(rt: Runtime, task: Task) -> dict[str, Any]:
    """A task with its counts, served version and whether a training job is queued or running."""
    s = object_session(task)
    assert s is not None
    # Read "is a job active" first, then the task row again: on PostgreSQL each statement sees
    # the newest commit, and a training job commits its end and its promotion together, so an
    # answer "not training" always carries that job's served version (no read skew).
    training = active_training(s, task.id) is not None
    s.refresh(task)
    status_counts = dict(
        s.execute(
            select(Item.status, func.count()).where(Item.task_id == task.id).group_by(Item.status)
        ).all()
    )
    n_items = sum(status_counts.values())
    human = current_labels(s, task.id, source="human")
    model = {k: v for k, v in current_labels(s, task.id, source="model").items() if k not in human}
    return {
        "id": task.id,
        "name": task.name,
        "category": task.category,
        "extra": task.extra,
        "labels": task.labels,
        "policy": task.policy,
        "served_version": task.served_version,
        "training": training,
        "counts": {
            "items": n_items,
            "ready": status_counts.get("ready", 0),
            "pending": status_counts.get("pending", 0),
            "failed": status_counts.get("failed", 0),
            "human_labelled": len(human),
            "model_labelled": len(model),
            "unlabelled": max(
                0, n_items - status_counts.get("failed", 0) - len(human) - len(model)
            ),
        },
        "auto_label": _auto_label_state(s, task) if task.policy.get("auto_label") else None,
        "created_at": task.created_at.isoformat(),
    }


def _auto_label_state(s: Session, task: Task) -> dict[str, Any]:
    """The served version's auto-labelling threshold and what it claims for model labels."""
    if task.served_version is None:
        return {"threshold": None, "reason": "no model yet"}
    metrics = s.scalar(
        select(ModelVersion.metrics).where(
            ModelVersion.task_id == task.id, ModelVersion.version == task.served_version
        )
    )
    estimate = dict((metrics or {}).get("auto_label") or {})
    return {
        "version": task.served_version,
        "threshold": estimate.get("threshold"),
        "estimated_accuracy": estimate.get("accuracy"),
        "accuracy_lower_bound": estimate.get("lower_bound"),
        "target_accuracy": estimate.get("target"),
        "confidence": estimate.get("confidence"),
        "heldout_labels": estimate.get("heldout"),
        "reason": estimate.get("reason", "estimated when a version is promoted"),
    }


def create_task(rt: Runtime, spec: TaskCreate) -> dict[str, Any]:
    # Refuses unknown combinations, and learner parameters of unknown names or wrong types.
    check_params(spec.category, spec.extra, spec.policy.learner, spec.policy.learner_params)
    if spec.extra == "multi-class" and len(spec.labels) < 2:
        raise InvalidInput("a multi-class task needs at least two labels")
    with rt.session() as s:
        task = Task(
            name=spec.name,
            category=spec.category,
            extra=spec.extra,
            labels=spec.labels,
            policy=spec.policy.model_dump(mode="json"),
            salt=secrets.token_hex(8) if spec.policy.seed is None else f"seed-{spec.policy.seed}",
        )
        s.add(task)
        s.flush()
        rt.folder(task.id).create()
        return summary(rt, task)


def list_tasks(rt: Runtime) -> list[dict[str, Any]]:
    with rt.session() as s:
        return [summary(rt, t) for t in s.scalars(select(Task).order_by(Task.id))]


def get_task(rt: Runtime, task_id: int) -> dict[str, Any]:
    with rt.session() as s:
        return summary(rt, get_task_row(s, task_id))


def delete_task(rt: Runtime, task_id: int) -> None:
    """Delete a task with everything keyed by it: rows, folder, cached models and features."""
    with rt.session() as s:
        s.delete(get_task_row(s, task_id))
    rt.folder(task_id).delete()
    rt.models.drop_task(task_id)
    FEATURES.drop_task(task_id)
