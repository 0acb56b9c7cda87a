from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from labelloop.api.deps import runtime
from labelloop.runtime import Runtime
from labelloop.service import export

router = APIRouter(tags=["export"])
Rt = Annotated[Runtime, Depends(runtime)]


@router.get("/tasks/{task_id}/export")
def export_task(
    task_id: int, rt: Rt, format: Annotated[str, Query()] = "jsonl"
) -> StreamingResponse:
    """Every item with its current label and where it came from, streamed."""
    lines = export.export(rt, task_id, format)
    return StreamingResponse(
        lines,
        media_type=export.FORMATS[format],
        headers={"content-disposition": f'attachment; filename="task-{task_id}.{format}"'},
    )
