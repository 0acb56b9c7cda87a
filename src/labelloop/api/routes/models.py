"""Model versions, training, jobs, metrics and label quality."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from labelloop.api.deps import RuntimeDep, TaskId, VersionNo
from labelloop.api.errors import responses
from labelloop.schemas import (
    JobPublic,
    ModelVersionPublic,
    Promoted,
    Suspects,
    TaskMetrics,
    TrainRequested,
)
from labelloop.service import metrics, models, quality

router = APIRouter(tags=["models"])


@router.get(
    "/tasks/{task_id}/models",
    response_model=list[ModelVersionPublic],
    responses=responses(401, 404, 422, 503),
)
def list_models(task_id: TaskId, rt: RuntimeDep) -> list[dict[str, Any]]:
    """Every trained version with its metrics, and which one serves."""
    return models.list_versions(rt, task_id)


@router.post(
    "/tasks/{task_id}/models/{version}/promote",
    response_model=Promoted,
    responses=responses(401, 404, 409, 422, 503),
)
def promote(task_id: TaskId, version: VersionNo, rt: RuntimeDep) -> dict[str, Any]:
    """Serve this version from the next request on (also a rollback to an earlier one)."""
    return models.promote(rt, task_id, version)


@router.post(
    "/tasks/{task_id}/train",
    status_code=202,
    response_model=TrainRequested,
    responses=responses(401, 404, 422, 503),
)
def train(task_id: TaskId, rt: RuntimeDep) -> dict[str, Any]:
    """Ask for a training run; if one is active, exactly one more runs after it."""
    return models.train_now(rt, task_id)


@router.get(
    "/tasks/{task_id}/jobs",
    response_model=list[JobPublic],
    responses=responses(401, 404, 422, 503),
)
def jobs(
    task_id: TaskId, rt: RuntimeDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, Any]]:
    """The task's most recent jobs, newest first, with state, attempts, worker and error."""
    return models.list_jobs(rt, task_id, limit)


@router.get(
    "/tasks/{task_id}/metrics",
    response_model=TaskMetrics,
    responses=responses(401, 404, 422, 503),
)
def task_metrics(task_id: TaskId, rt: RuntimeDep) -> dict[str, Any]:
    """Per version: labels used, held-out accuracy and macro-F1, training time; the edit rate."""
    return metrics.task_metrics(rt, task_id)


@router.get(
    "/tasks/{task_id}/suspects",
    response_model=Suspects,
    responses=responses(401, 404, 422, 503),
)
def suspects(
    task_id: TaskId, rt: RuntimeDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> dict[str, Any]:
    """Human labels the model confidently disagrees with (out of sample), most suspicious first,
    and how often each annotator agrees with the others on shared items."""
    return quality.suspects(rt, task_id, limit)
