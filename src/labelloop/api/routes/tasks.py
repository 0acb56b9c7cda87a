from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from labelloop.api.deps import runtime
from labelloop.runtime import Runtime
from labelloop.service import tasks

router = APIRouter(tags=["tasks"])
Rt = Annotated[Runtime, Depends(runtime)]


@router.post("/tasks", status_code=201)
def create_task(body: tasks.TaskCreate, rt: Rt) -> dict[str, Any]:
    """Create a task; it starts with no model."""
    return tasks.create_task(rt, body)


@router.get("/tasks")
def list_tasks(rt: Rt) -> list[dict[str, Any]]:
    return tasks.list_tasks(rt)


@router.get("/tasks/{task_id}")
def get_task(task_id: int, rt: Rt) -> dict[str, Any]:
    """The task with its counts, served version, and ``training``: a job is queued or running."""
    return tasks.get_task(rt, task_id)


@router.delete("/tasks/{task_id}", status_code=204)
def delete_task(task_id: int, rt: Rt) -> Response:
    tasks.delete_task(rt, task_id)
    return Response(status_code=204)
