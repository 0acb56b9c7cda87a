"""How far a task is, per annotator and as a whole; giving back reserved items."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from labelloop.api.deps import CallerDep, RuntimeDep, TaskId
from labelloop.api.errors import responses
from labelloop.schemas import Released, TaskProgress, Text
from labelloop.service import progress, reservations

router = APIRouter(tags=["annotators"])


@router.get(
    "/tasks/{task_id}/progress",
    response_model=TaskProgress,
    responses=responses(401, 404, 422, 503),
)
def task_progress(task_id: TaskId, rt: RuntimeDep) -> dict[str, Any]:
    """Labelled, left, labels per hour and time left, for the task and per annotator (with their
    agreement with the others on shared items, and the items they hold)."""
    return progress.progress(rt, task_id)


@router.delete(
    "/tasks/{task_id}/reservations",
    response_model=Released,
    responses=responses(401, 404, 422, 503),
)
def release(
    task_id: TaskId,
    rt: RuntimeDep,
    caller: CallerDep,
    annotator: Annotated[
        Text | None,
        Query(
            max_length=200,
            description="whose items to give back (an annotator's token: its own); "
            "none: every reservation of the task",
        ),
    ] = None,
) -> dict[str, int]:
    """Give back reserved items at once (a labelling page that closes), instead of at the end of
    their lease."""
    return reservations.give_back(rt, task_id, caller.annotator or annotator)
