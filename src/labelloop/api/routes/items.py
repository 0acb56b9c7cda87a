"""Items: added in bulk, read back one at a time."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from labelloop.api.deps import ItemId, RuntimeDep, TaskId
from labelloop.api.errors import responses
from labelloop.schemas import ItemPublic, ItemsAdded, ItemsCreate
from labelloop.service import items

router = APIRouter(tags=["items"])


@router.post(
    "/tasks/{task_id}/items",
    status_code=201,
    response_model=ItemsAdded,
    responses=responses(400, 401, 403, 404, 413, 422, 503),
)
def add_items(task_id: TaskId, body: ItemsCreate, rt: RuntimeDep) -> dict[str, Any]:
    """Add items in bulk; an item whose ``external_id`` is already stored is not added twice."""
    return items.add_items(rt, task_id, body.items)


@router.get(
    "/tasks/{task_id}/items/{item_id}",
    response_model=ItemPublic,
    responses=responses(401, 404, 422, 503),
)
def get_item(task_id: TaskId, item_id: ItemId, rt: RuntimeDep) -> dict[str, Any]:
    """Status, label history and current pre-label of one item."""
    return items.get_item(rt, task_id, item_id)
