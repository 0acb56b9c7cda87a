"""Annotations: labels appended, all or none."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from labelloop.api.deps import RuntimeDep, TaskId
from labelloop.api.errors import responses
from labelloop.schemas import AnnotationsCreate, AnnotationsSubmitted
from labelloop.service import labelling

router = APIRouter(tags=["annotations"])


@router.post(
    "/tasks/{task_id}/annotations",
    status_code=201,
    response_model=AnnotationsSubmitted,
    responses=responses(400, 401, 404, 413, 422, 503),
)
def submit(task_id: TaskId, body: AnnotationsCreate, rt: RuntimeDep) -> dict[str, Any]:
    """Append labels (all or none). Each records the pre-label shown, so edit rates are measured."""
    return labelling.submit(rt, task_id, body.annotations)
