"""Getting data in without code: folders of images on the server, uploaded images, CSVs of texts;
and an item's content back out, so that a browser can show it.

Folders are only ever read below the import roots the operator configured (``--import-root``);
uploads are written into the task's own folder, which is below the data root.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from sqlalchemy import select

from labelloop.config import Settings
from labelloop.datastore import write_bytes_atomic
from labelloop.errors import ForbiddenPath, InvalidInput, NotFound
from labelloop.fetch import read_link
from labelloop.loop.features import is_text
from labelloop.runtime import Runtime
from labelloop.service.common import get_task_row
from labelloop.service.items import ItemIn, add_items
from labelloop.store.models import Item

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
MAX_LISTED = 500
BATCH = 1000
TEXT_COLUMNS = ("text", "content", "sentence", "body", "review")
ID_COLUMNS = ("id", "external_id", "key")


def _roots(settings: Settings) -> list[Path]:
    return [p.expanduser().resolve() for p in settings.import_roots]


def _below_root(settings: Settings, path: str) -> Path:
    target = Path(path).expanduser()
    if not target.is_absolute():
        raise InvalidInput(f"give an absolute path: {path!r}")
    resolved = target.resolve()
    if not any(resolved.is_relative_to(root) for root in _roots(settings)):
        raise ForbiddenPath(
            f"{path!r} is outside the import roots; the operator can allow its folder with "
            "--import-root or LABELLOOP_IMPORT_ROOTS"
        )
    if not resolved.is_dir():
        raise NotFound(f"no such folder: {path!r}")
    return resolved


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_folders(settings: Settings, path: str | None = None) -> dict[str, Any]:
    """The import roots, or the sub-folders and image count of one folder below them."""
    roots = _roots(settings)
    if path is None:
        return {
            "path": None,
            "parent": None,
            "roots": [str(r) for r in roots],
            "folders": [
                {"name": str(r), "path": str(r), "images": len(_images_in(r, False))}
                for r in roots
                if r.is_dir()
            ],
            "images": 0,
            "sample": [],
        }
    folder = _below_root(settings, path)
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    images = _images_in(folder, False)
    parent = folder.parent
    return {
        "path": str(folder),
        "parent": str(parent) if any(parent.is_relative_to(r) for r in roots) else None,
        "roots": [str(r) for r in roots],
        "folders": [
            {"name": p.name, "path": str(p), "images": len(_images_in(p, False))}
            for p in subs[:MAX_LISTED]
        ],
        "images": len(images),
        "sample": [p.name for p in images[:12]],
    }


def _add_in_batches(rt: Runtime, task_id: int, specs: list[ItemIn]) -> dict[str, Any]:
    created = existing = 0
    for start in range(0, len(specs), BATCH):
        out = add_items(rt, task_id, specs[start : start + BATCH])
        created += out["created"]
        existing += out["existing"]
    return {"created": created, "existing": existing}


def _require(rt: Runtime, task_id: int, text: bool) -> None:
    with rt.session() as s:
        category = get_task_row(s, task_id).category
    if is_text(category) != text:
        kind = "text" if text else "image"
        raise InvalidInput(f"task {task_id} is a {category} task; this import is for {kind} tasks")


def _external_id(prefix: str, value: str) -> str:
    ext = f"{prefix}{value}"
    return (
        ext if len(ext) <= 512 else f"{prefix}sha256:{hashlib.sha256(value.encode()).hexdigest()}"
    )


def import_folder(rt: Runtime, task_id: int, path: str, recursive: bool = False) -> dict[str, Any]:
    """Every image of a folder below an import root becomes an item (again: nothing added twice)."""
    _require(rt, task_id, text=False)
    folder = _below_root(rt.settings, path)
    images = _images_in(folder, recursive)
    if not images:
        raise InvalidInput(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path!r}")
    specs = [ItemIn(data=str(p), external_id=_external_id("file:", str(p))) for p in images]
    return {"folder": str(folder), **_add_in_batches(rt, task_id, specs)}


@dataclass(frozen=True)
class Upload:
    filename: str
    raw: bytes


def save_uploads(rt: Runtime, task_id: int, files: list[Upload]) -> dict[str, Any]:
    """Uploaded images are kept in the task's folder under their content hash, then added."""
    _require(rt, task_id, text=False)
    if not files:
        raise InvalidInput("no files uploaded")
    folder = rt.folder(task_id).path / "Uploads"
    specs: list[ItemIn] = []
    refused: list[str] = []
    for f in files:
        try:
            with Image.open(io.BytesIO(f.raw)) as img:
                fmt = (img.format or "").lower()
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            refused.append(f.filename)
            continue
        digest = hashlib.sha256(f.raw).hexdigest()
        suffix = {"jpeg": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt}" if fmt else ".img")
        path = folder / f"{digest}{suffix}"
        if not path.exists():
            write_bytes_atomic(path, f.raw)
        specs.append(ItemIn(data=str(path), external_id=f"upload:{digest}"))
    if not specs:
        raise InvalidInput(f"none of the uploaded files is an image: {', '.join(refused)}")
    unique = list({s.external_id: s for s in specs}.values())
    return {**_add_in_batches(rt, task_id, unique), "refused": refused}


def _pick(header: list[str], wanted: str | None, known: tuple[str, ...], what: str) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted.strip().lower() not in lowered:
            raise InvalidInput(f"the CSV has no column {wanted!r}; its columns are {header}")
        return lowered.index(wanted.strip().lower())
    for name in known:
        if name in lowered:
            return lowered.index(name)
    return None


def import_csv(
    rt: Runtime,
    task_id: int,
    raw: bytes,
    text_column: str | None = None,
    id_column: str | None = None,
) -> dict[str, Any]:
    """Each row of a CSV (with a header) becomes a text item: column ``text`` (or the one named,
    else the first), and ``id`` as its external id when there is one."""
    _require(rt, task_id, text=True)
    try:
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the CSV is not UTF-8 text") from None
    rows = list(csv.reader(io.StringIO(decoded)))
    if len(rows) < 2:
        raise InvalidInput("the CSV needs a header row and at least one row of text")
    header, body = rows[0], rows[1:]
    text_at = _pick(header, text_column, TEXT_COLUMNS, "text")
    text_at = 0 if text_at is None else text_at
    id_at = _pick(header, id_column, ID_COLUMNS, "id")
    specs: list[ItemIn] = []
    skipped = 0
    for n, row in enumerate(body, start=2):
        text = row[text_at].strip() if text_at < len(row) else ""
        if not text:
            skipped += 1
            continue
        ext = row[id_at].strip() if id_at is not None and id_at < len(row) else ""
        specs.append(ItemIn(data=text, external_id=_external_id("csv:", ext or f"row-{n}")))
    if not specs:
        raise InvalidInput("the CSV has no non-empty texts")
    seen: dict[str | None, ItemIn] = {}
    for spec in specs:
        seen.setdefault(spec.external_id, spec)
    return {
        **_add_in_batches(rt, task_id, list(seen.values())),
        "skipped": skipped,
        "text_column": header[text_at],
    }


def item_content(rt: Runtime, task_id: int, item_id: int) -> tuple[bytes, str]:
    """The bytes behind an item and a safe media type: an image type PIL recognises, plain text
    for text items, else ``application/octet-stream`` (never HTML or SVG)."""
    with rt.session() as s:
        category = get_task_row(s, task_id).category
        item = s.scalar(select(Item).where(Item.id == item_id, Item.task_id == task_id))
        if item is None:
            raise NotFound(f"task {task_id} has no item {item_id}")
        data = item.data
    if is_text(category):
        return data.encode("utf-8"), "text/plain; charset=utf-8"
    raw = read_link(data, rt.settings).raw
    try:
        with Image.open(io.BytesIO(raw)) as img:
            mime = Image.MIME.get(img.format or "")
    except (UnidentifiedImageError, OSError):
        mime = None
    if mime is None or not mime.startswith("image/") or "svg" in mime:
        mime = "application/octet-stream"
    return raw, mime
