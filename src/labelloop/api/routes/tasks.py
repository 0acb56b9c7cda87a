"""Tasks: create, list, read, change the name or policy, delete."""

from __future__ import annotations

from fastapi import APIRouter, Response

from labelloop.api.deps import RuntimeDep, TaskId
from labelloop.api.errors import responses
from labelloop.schemas import TaskCreate, TaskPublic, TaskUpdate
from labelloop.service import tasks

router = APIRouter(tags=["tasks"])


@router.post(
    "/tasks",
    status_code=201,
    response_model=TaskPublic,
    responses=responses(400, 401, 409, 413, 422, 503),
)
def create_task(body: TaskCreate, rt: RuntimeDep) -> TaskPublic:
    """Create a task; it starts with no model. Task names are unique (409 for a taken one)."""
    return tasks.create_task(rt, body)


@router.get("/tasks", response_model=list[TaskPublic], responses=responses(401, 503))
def list_tasks(rt: RuntimeDep) -> list[TaskPublic]:
    """Every task with its counts and served version, oldest first."""
    return tasks.list_tasks(rt)


@router.get("/tasks/{task_id}", response_model=TaskPublic, responses=responses(401, 404, 422, 503))
def get_task(task_id: TaskId, rt: RuntimeDep) -> TaskPublic:
    """The task with its counts, served version, and ``training``: a job is queued or running."""
    return tasks.get_task(rt, task_id)


@router.patch(
    "/tasks/{task_id}",
    response_model=TaskPublic,
    responses=responses(400, 401, 404, 409, 413, 422, 503),
)
def update_task(task_id: TaskId, body: TaskUpdate, rt: RuntimeDep) -> TaskPublic:
    """Rename the task or change policy fields (those given replace the current ones)."""
    return tasks.update_task(rt, task_id, body)


@router.delete(
    "/tasks/{task_id}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 404, 422, 503),
)
def delete_task(task_id: TaskId, rt: RuntimeDep) -> Response:
    """Delete the task with its items, labels, models, jobs, folder and cached features."""
    tasks.delete_task(rt, task_id)
    return Response(status_code=204)
