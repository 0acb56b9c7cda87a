"""Getting data in from the browser (server folders, uploads, CSVs) and item content out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from labelloop import imports
from labelloop.api.deps import runtime
from labelloop.runtime import Runtime

router = APIRouter(tags=["import"])
Rt = Annotated[Runtime, Depends(runtime)]


class FolderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096)
    recursive: bool = False


@router.get("/import/folders")
def folders(rt: Rt, path: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    """The import roots, or one folder below them: its sub-folders and how many images it holds."""
    return imports.list_folders(rt.settings, path)


@router.post("/tasks/{task_id}/import/folder", status_code=201)
def import_folder(task_id: int, body: FolderIn, rt: Rt) -> dict[str, Any]:
    """Every image of a server folder (below an import root) becomes an item."""
    return imports.import_folder(rt, task_id, body.path, body.recursive)


@router.post("/tasks/{task_id}/import/csv", status_code=201)
def import_csv(
    task_id: int,
    rt: Rt,
    file: Annotated[UploadFile, File()],
    text_column: Annotated[str | None, Form()] = None,
    id_column: Annotated[str | None, Form()] = None,
) -> dict[str, Any]:
    """Each row of an uploaded CSV becomes a text item."""
    raw = file.file.read()
    return imports.import_csv(rt, task_id, raw, text_column, id_column)


@router.post("/tasks/{task_id}/uploads", status_code=201)
def upload(task_id: int, rt: Rt, files: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
    """Uploaded images are stored in the task's folder and added as items."""
    got = [imports.Upload(f.filename or "upload", f.file.read()) for f in files]
    return imports.save_uploads(rt, task_id, got)


@router.get("/tasks/{task_id}/items/{item_id}/content")
def content(task_id: int, item_id: int, rt: Rt) -> Response:
    """The item's image (or text), for the labelling page."""
    raw, media_type = imports.item_content(rt, task_id, item_id)
    return Response(
        raw,
        media_type=media_type,
        headers={"x-content-type-options": "nosniff", "cache-control": "private, max-age=3600"},
    )
