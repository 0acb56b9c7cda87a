from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from labelloop.api.deps import runtime
from labelloop.runtime import Runtime
from labelloop.service import metrics, models, quality

router = APIRouter(tags=["models"])
Rt = Annotated[Runtime, Depends(runtime)]


@router.get("/tasks/{task_id}/models")
def list_models(task_id: int, rt: Rt) -> list[dict[str, Any]]:
    """Every trained version with its metrics, and which one serves."""
    return models.list_versions(rt, task_id)


@router.post("/tasks/{task_id}/models/{version}/promote")
def promote(task_id: int, version: int, rt: Rt) -> dict[str, Any]:
    """Serve this version from the next request on (also a rollback to an earlier one)."""
    return models.promote(rt, task_id, version)


@router.post("/tasks/{task_id}/train", status_code=202)
def train(task_id: int, rt: Rt) -> dict[str, Any]:
    """Ask for a training run; if one is active, exactly one more runs after it."""
    return models.train_now(rt, task_id)


@router.get("/tasks/{task_id}/jobs")
def jobs(
    task_id: int, rt: Rt, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, Any]]:
    return models.list_jobs(rt, task_id, limit)


@router.get("/tasks/{task_id}/metrics")
def task_metrics(task_id: int, rt: Rt) -> dict[str, Any]:
    """Per version: labels used, held-out accuracy and macro-F1, training time; the edit rate."""
    return metrics.task_metrics(rt, task_id)


@router.get("/tasks/{task_id}/suspects")
def suspects(
    task_id: int, rt: Rt, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> dict[str, Any]:
    """Human labels the model confidently disagrees with (out of sample), most suspicious first,
    and how often each annotator agrees with the others on shared items."""
    return quality.suspects(rt, task_id, limit)
