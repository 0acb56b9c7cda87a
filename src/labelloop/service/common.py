"""Helpers shared by the service modules."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from labelloop.errors import NotFound
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Job, Task


def get_task_row(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    return task


def task_spec(rt: Runtime, task_id: int) -> TaskSpec:
    with rt.reading() as s:
        return TaskSpec.of(get_task_row(s, task_id))


def enqueue(rt: Runtime, jobs: Sequence[Job | int]) -> None:
    """Hand committed jobs to the backend (a runtime without one leaves them queued in the store)."""
    ids = [j if isinstance(j, int) else j.id for j in jobs]
    if ids and rt.has_jobs:
        rt.jobs.enqueue(ids)
