"""Creating, reading, changing and deleting tasks.

The request shapes (:class:`~labelloop.schemas.TaskCreate`, :class:`~labelloop.schemas.TaskUpdate`)
live in :mod:`labelloop.schemas`; a policy is checked here the same way whether a task is created
or patched (:func:`checked_policy`), before anything is written.
"""

from __future__ import annotations

import secrets

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, object_session

from labelloop.errors import Conflict, InvalidInput, NotFound
from labelloop.kinds import kind_for
from labelloop.kinds.registry import is_kind
from labelloop.learners.registry import check_params, has_learner
from labelloop.loop.cache import FEATURES
from labelloop.loop.labels import current_labels
from labelloop.loop.policy import Policy
from labelloop.loop.scheduling import active_training, lock_task
from labelloop.runtime import Runtime
from labelloop.schemas import AutoLabelState, TaskCreate, TaskPublic, TaskUpdate
from labelloop.service.common import get_task_row
from labelloop.store.models import Item, ModelVersion, Task, utcnow

__all__ = [
    "TaskCreate",
    "TaskUpdate",
    "checked_policy",
    "create_task",
    "delete_task",
    "get_task",
    "list_tasks",
    "summary",
    "update_task",
]


def checked_policy(category: str, extra: str, labels: list[str], policy: Policy) -> Policy:
    """``policy`` if a task of this category, extra and labels can run it; else
    :class:`InvalidInput`."""
    # Refuses unknown combinations, and learner parameters of unknown names or wrong types.
    # A kind without a learner yet (its tasks are labelled without a model) takes no learner.
    if (
        not is_kind(category, extra)
        or has_learner(category, extra)
        or policy.learner
        or (policy.learner_params)
    ):
        check_params(category, extra, policy.learner, policy.learner_params)
    refusal = kind_for(category, extra).auto_label_refusal if is_kind(category, extra) else None
    if policy.auto_label is not None and refusal is not None:
        raise InvalidInput(f"policy.auto_label: {refusal}")
    unknown = [label for label in policy.hotkeys if label not in labels]
    if unknown:
        raise InvalidInput(
            "policy.hotkeys names labels the task does not have: " + ", ".join(unknown)
        )
    return policy


#: The PostgreSQL advisory lock that serialises naming tasks (two creations cannot both pass the
#: check for the same free name).
NAMES_LOCK = 0x6C6C_6E61_6D65


def lock_names(s: Session) -> None:
    """Hold the naming lock until the transaction ends (SQLite serialises writers already)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": NAMES_LOCK})


def check_name_free(s: Session, name: str, task_id: int | None = None) -> None:
    """Refuse a task name another task already has (people pick tasks by name on the pages)."""
    taken = s.scalar(select(Task.id).where(Task.name == name, Task.id != (task_id or 0)).limit(1))
    if taken is not None:
        raise Conflict(f'a task named "{name}" exists already (task {taken}); choose another name')


def free_name(s: Session, base: str) -> str:
    """``base``, or ``base (2)``, ``base (3)``… : the first name no task has (for tasks that
    labelloop names itself, such as a Label Studio project's)."""
    taken = set(s.scalars(select(Task.name).where(Task.name.startswith(base))))
    n, name = 1, base
    while name in taken:
        n += 1
        name = f"{base} ({n})"
    return name


def summary(rt: Runtime, task: Task) -> TaskPublic:
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
        "kind": kind_for(task.category, task.extra).public(),
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
        "archived": task.archived_at is not None,
    }


def _auto_label_state(s: Session, task: Task) -> AutoLabelState:
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


def create_task(rt: Runtime, spec: TaskCreate) -> TaskPublic:
    checked_policy(spec.category, spec.extra, spec.labels, spec.policy)
    kind_for(spec.category, spec.extra).check_labels(spec.labels)
    with rt.session() as s:
        lock_names(s)
        check_name_free(s, spec.name)
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


def list_tasks(rt: Runtime) -> list[TaskPublic]:
    with rt.session() as s:
        return [summary(rt, t) for t in s.scalars(select(Task).order_by(Task.id))]


def get_task(rt: Runtime, task_id: int) -> TaskPublic:
    with rt.session() as s:
        return summary(rt, get_task_row(s, task_id))


def update_task(rt: Runtime, task_id: int, change: TaskUpdate) -> TaskPublic:
    """Rename a task or change policy fields; the policy is checked as at creation.

    A changed policy takes effect from the next decision that reads it (the next label, training,
    promotion or ``/next``). The seed is fixed at creation: the task's random choices were drawn
    from it.
    """
    changes = change.policy_changes()
    with rt.session() as s:
        task = lock_task(s, task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        if changes:
            current = Policy.model_validate(task.policy)
            if "seed" in changes and changes["seed"] != current.seed:
                raise InvalidInput("policy.seed is fixed when the task is created")
            merged = Policy.model_validate({**current.model_dump(mode="json"), **changes})
            task.policy = checked_policy(
                task.category, task.extra, list(task.labels), merged
            ).model_dump(mode="json")
        if change.name is not None and change.name != task.name:
            lock_names(s)
            check_name_free(s, change.name, task.id)
            task.name = change.name
        if change.archived is not None and change.archived != (task.archived_at is not None):
            task.archived_at = utcnow() if change.archived else None
        s.flush()
        return summary(rt, task)


def delete_task(rt: Runtime, task_id: int) -> None:
    """Delete a task with everything keyed by it: rows, folder, cached models and features."""
    with rt.session() as s:
        s.delete(get_task_row(s, task_id))
    rt.folder(task_id).delete()
    rt.models.drop_task(task_id)
    FEATURES.drop_task(task_id)
