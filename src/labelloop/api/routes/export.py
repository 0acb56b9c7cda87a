"""A task's labelled data set, streamed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from labelloop.api.deps import RuntimeDep, TaskId
from labelloop.api.errors import responses
from labelloop.service import export

router = APIRouter(tags=["export"])

#: Not JSON: a line per item (JSON Lines) or a CSV table.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Every item, one per line.",
        "content": {media: {"schema": {"type": "string"}} for media in export.FORMATS.values()},
    }
}


@router.get(
    "/tasks/{task_id}/export",
    response_class=StreamingResponse,
    responses={**STREAMED, **responses(401, 404, 422, 503)},
)
def export_task(
    task_id: TaskId,
    rt: RuntimeDep,
    format: Annotated[
        Literal["jsonl", "csv", "conll"],
        Query(description="conll: text-spans tasks' labelled texts as token and BIO tag lines"),
    ] = "jsonl",
) -> StreamingResponse:
    """Every item with its current label and where it came from, streamed."""
    lines = export.export(rt, task_id, format)
    return StreamingResponse(
        lines,
        media_type=export.FORMATS[format],
        headers={"content-disposition": f'attachment; filename="task-{task_id}.{format}"'},
    )
