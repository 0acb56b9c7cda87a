"""Getting data in from the browser (server folders, uploads, CSVs) and item content out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from labelloop import imports
from labelloop.api.deps import ItemId, RuntimeDep, TaskId
from labelloop.api.errors import responses
from labelloop.fetch import IMAGE_FORMATS
from labelloop.schemas import (
    CsvImported,
    FolderImport,
    FolderImported,
    FolderListing,
    JsonlImported,
    Text,
    UploadsAdded,
)

router = APIRouter(tags=["import"])

#: Not JSON: the item's bytes under their own media type.
CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The item's image, with its type; for a text task, its text.",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in [*sorted(set(IMAGE_FORMATS.values())), "text/plain"]
        },
    }
}


@router.get(
    "/import/folders", response_model=FolderListing, responses=responses(401, 403, 404, 422)
)
def folders(
    rt: RuntimeDep,
    path: Annotated[
        Text | None, Query(max_length=4096, description="a folder on the server")
    ] = None,
) -> dict[str, Any]:
    """The import roots, or one folder below them: its sub-folders and how many images it holds."""
    return imports.list_folders(rt.settings, path)


@router.post(
    "/tasks/{task_id}/import/folder",
    status_code=201,
    response_model=FolderImported,
    responses=responses(400, 401, 403, 404, 409, 413, 422, 503),
)
def import_folder(task_id: TaskId, body: FolderImport, rt: RuntimeDep) -> dict[str, Any]:
    """Every image of a server folder (below an import root, sub-folders included) becomes an
    item; with ``labels_from_folders`` the sub-folder names are the images' labels. Every file
    left out is named in ``skipped`` with the reason."""
    return imports.import_folder(
        rt, task_id, body.path, body.recursive, body.labels_from_folders, body.add_labels
    )


@router.post(
    "/tasks/{task_id}/import/csv",
    status_code=201,
    response_model=CsvImported,
    responses=responses(400, 401, 404, 409, 413, 422, 503),
)
def import_csv(
    task_id: TaskId,
    rt: RuntimeDep,
    file: Annotated[UploadFile, File()],
    text_column: Annotated[
        Text | None,
        Form(max_length=200, description="the column of the texts (default: the one named text)"),
    ] = None,
    id_column: Annotated[Text | None, Form(max_length=200)] = None,
    label_column: Annotated[
        Text | None,
        Form(max_length=200, description="a column of labels, recorded as imported human labels"),
    ] = None,
    add_labels: Annotated[
        bool, Form(description="labels of the label column the task lacks are added to it")
    ] = False,
) -> dict[str, Any]:
    """Each row of an uploaded CSV becomes a text item. A CSV without a ``text`` column is refused
    unless ``text_column`` names the column of the texts; rows left out are in ``skipped_rows``."""
    raw = file.file.read()
    return imports.import_csv(rt, task_id, raw, text_column, id_column, label_column, add_labels)


@router.post(
    "/tasks/{task_id}/import/jsonl",
    status_code=201,
    response_model=JsonlImported,
    responses=responses(400, 401, 404, 409, 413, 422, 503),
)
def import_jsonl(
    task_id: TaskId,
    rt: RuntimeDep,
    file: Annotated[UploadFile, File()],
    add_labels: Annotated[
        bool, Form(description="labels the file uses that the task lacks are added to it")
    ] = False,
) -> dict[str, Any]:
    """Each line of an uploaded JSON lines file (``{"text": …, "spans": [{"start", "end",
    "label"}]}``; Prodigy's, doccano's and Label Studio's exports too) becomes a text item, its
    spans (or labels) a human label; lines left out are in ``skipped_lines`` with the reason."""
    return imports.import_jsonl(rt, task_id, file.file.read(), add_labels)


@router.post(
    "/tasks/{task_id}/uploads",
    status_code=201,
    response_model=UploadsAdded,
    responses=responses(400, 401, 404, 413, 422, 503),
)
def upload(
    task_id: TaskId, rt: RuntimeDep, files: Annotated[list[UploadFile], File()]
) -> dict[str, Any]:
    """Uploaded images are stored in the task's folder and added as items."""
    got = [imports.Upload(f.filename or "upload", f.file.read()) for f in files]
    return imports.save_uploads(rt, task_id, got)


@router.get(
    "/tasks/{task_id}/items/{item_id}/content",
    response_class=Response,
    responses={**CONTENT, **responses(401, 403, 404, 413, 422, 503)},
)
def content(task_id: TaskId, item_id: ItemId, rt: RuntimeDep) -> Response:
    """The item's image (or text), for the labelling page."""
    raw, media_type = imports.item_content(rt, task_id, item_id)
    return Response(
        raw,
        media_type=media_type,
        headers={"x-content-type-options": "nosniff", "cache-control": "private, max-age=3600"},
    )
