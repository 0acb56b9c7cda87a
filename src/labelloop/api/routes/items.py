from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from labelloop.api.deps import runtime
from labelloop.runtime import Runtime
from labelloop.service import items

router = APIRouter(tags=["items"])
Rt = Annotated[Runtime, Depends(runtime)]


class ItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[items.ItemIn]


@router.post("/tasks/{task_id}/items", status_code=201)
def add_items(task_id: int, body: ItemsIn, rt: Rt) -> dict[str, Any]:
    """Add items in bulk; an item whose ``external_id`` is already stored is not added twice."""
    return items.add_items(rt, task_id, body.items)


@router.get("/tasks/{task_id}/items/{item_id}")
def get_item(task_id: int, item_id: int, rt: Rt) -> dict[str, Any]:
    """Status, label history and current pre-label of one item."""
    return items.get_item(rt, task_id, item_id)
