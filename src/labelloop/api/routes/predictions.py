from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from labelloop.api.deps import runtime
from labelloop.runtime import Runtime
from labelloop.service import predictions

router = APIRouter(tags=["predictions"])
Rt = Annotated[Runtime, Depends(runtime)]


class DataIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field(min_length=1, max_length=1_000_000)


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[DataIn] = Field(min_length=1)


@router.get("/tasks/{task_id}/predictions")
def get_prediction(task_id: int, item_id: Annotated[int, Query()], rt: Rt) -> dict[str, Any]:
    """The current pre-label of a stored item; ``status: no_model`` before the first version."""
    return predictions.get_prediction(rt, task_id, item_id)


@router.post("/tasks/{task_id}/predict")
def predict(task_id: int, body: PredictIn, rt: Rt) -> dict[str, Any]:
    """Pre-labels for data links (or texts) that are not stored as items."""
    return predictions.predict(rt, task_id, [i.data for i in body.items])


@router.get("/tasks/{task_id}/next")
def next_items(
    task_id: int, rt: Rt, limit: Annotated[int, Query(ge=1, le=1000)] = 10
) -> dict[str, Any]:
    """Unlabelled items in the order that helps the model most, with their pre-labels."""
    return predictions.next_items(rt, task_id, limit)
