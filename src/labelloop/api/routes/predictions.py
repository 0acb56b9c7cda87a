"""Pre-labels: of a stored item, of data not stored, and of the next items to label."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from labelloop.api.deps import ItemIdQuery, RuntimeDep, TaskId
from labelloop.api.errors import responses
from labelloop.schemas import DataPredictions, NextItems, PredictionPublic, PredictRequest
from labelloop.service import predictions

router = APIRouter(tags=["predictions"])


@router.get(
    "/tasks/{task_id}/predictions",
    response_model=PredictionPublic,
    responses=responses(401, 404, 422, 503, 504),
)
def get_prediction(task_id: TaskId, item_id: ItemIdQuery, rt: RuntimeDep) -> dict[str, Any]:
    """The current pre-label of a stored item; ``status: no_model`` before the first version."""
    return predictions.get_prediction(rt, task_id, item_id)


@router.post(
    "/tasks/{task_id}/predict",
    response_model=DataPredictions,
    responses=responses(400, 401, 404, 413, 422, 503, 504),
)
def predict(task_id: TaskId, body: PredictRequest, rt: RuntimeDep) -> dict[str, Any]:
    """Pre-labels for data links (or texts) that are not stored as items."""
    return predictions.predict(rt, task_id, [i.data for i in body.items])


@router.get(
    "/tasks/{task_id}/next",
    response_model=NextItems,
    responses=responses(401, 404, 422, 503, 504),
)
def next_items(
    task_id: TaskId, rt: RuntimeDep, limit: Annotated[int, Query(ge=1, le=1000)] = 10
) -> dict[str, Any]:
    """Unlabelled items in the order that helps the model most, with their pre-labels."""
    return predictions.next_items(rt, task_id, limit)
