"""The item browser's list: a task's items, filtered, a page at a time."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from labelloop.api.deps import RuntimeDep, TaskId
from labelloop.api.errors import responses
from labelloop.schemas import MAX_ID, ItemsPage, Text
from labelloop.service import browse

router = APIRouter(tags=["items"])


@router.get(
    "/tasks/{task_id}/items",
    response_model=ItemsPage,
    responses=responses(401, 404, 422, 503),
)
def list_items(
    task_id: TaskId,
    rt: RuntimeDep,
    source: Annotated[
        browse.Source | None,
        Query(description="where the label comes from: human, model, or none (unlabelled)"),
    ] = None,
    label: Annotated[
        Text | None, Query(max_length=200, description="items whose label includes this one")
    ] = None,
    suspect: Annotated[
        bool | None, Query(description="true: flagged as likely label errors; false: not flagged")
    ] = None,
    annotator: Annotated[
        Text | None, Query(max_length=200, description="items that carry this person's label")
    ] = None,
    status: Annotated[
        browse.Status | None,
        Query(description="pending (being read), ready, or failed (unreadable: see `error`)"),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """The task's items by id, with their label, its source, who labelled them and the label-error
    flag; filters combine."""
    filters = browse.Filters(source, label, suspect, annotator, status)
    return browse.list_items(rt, task_id, filters, offset, limit)
