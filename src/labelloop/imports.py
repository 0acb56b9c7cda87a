"""Getting data in without code: folders of images on the server, uploaded images, CSVs of texts;
and an item's content back out, so that a browser can show it.

Folders are only ever read below the import roots the operator configured (``--import-root``);
uploads are written into the task's own folder, which is below the data root, and items name them
by reference (``upload:<sha256>.<ext>``), never by a path. Content goes back out only as what the
task's kind can show: an image of a known format with its own type, or text.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labelloop.config import Settings
from labelloop.datastore import write_bytes_atomic
from labelloop.errors import FetchError, ForbiddenPath, InvalidInput, NotFound
from labelloop.fetch import UPLOAD_PREFIX, identify_image, local_allowed, read_link
from labelloop.loop.features import is_text
from labelloop.runtime import Runtime
from labelloop.service.common import get_task_row
from labelloop.service.items import MAX_DATA_CHARS, ItemIn, add_items
from labelloop.store.models import Item

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
MAX_LISTED = 500
BATCH = 1000
TEXT_COLUMNS = ("text", "content", "sentence", "body", "review")
ID_COLUMNS = ("id", "external_id", "key")
#: The longest text a CSV field may hold: as long as an item's data may be.
MAX_TEXT = MAX_DATA_CHARS
UPLOAD_SUFFIXES = {"JPEG": ".jpg", "TIFF": ".tif"}

# The csv module refuses fields over 131,072 characters by default (a process-wide setting); a
# text item may be longer, so the limit is raised to what an item holds, and no further.
csv.field_size_limit(max(csv.field_size_limit(), MAX_TEXT))


def _roots(settings: Settings) -> list[Path]:
    return [p.expanduser().resolve() for p in settings.import_roots]


def _below_root(settings: Settings, path: str) -> Path:
    if any(ord(c) < 32 for c in path):
        raise InvalidInput("a path cannot contain control characters (NUL, newline, …)")
    try:
        target = Path(path).expanduser()
        if not target.is_absolute():
            raise InvalidInput(f"give an absolute path: {path!r}")
        resolved = target.resolve()
    except (OSError, RuntimeError, ValueError):
        raise InvalidInput(f"not a usable path: {path!r}") from None
    if not local_allowed(resolved, settings):
        raise ForbiddenPath(
            f"{path!r} is outside the import roots; the operator can allow its folder with "
            "--import-root or LABELLOOP_IMPORT_ROOTS"
        )
    if not resolved.is_dir():
        raise NotFound(f"no such folder: {path!r}")
    return resolved


def _images_in(settings: Settings, folder: Path, recursive: bool) -> list[Path]:
    """Image files of a folder that links may name (a link out of the import roots, or into the
    data folder, is left out)."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in pattern
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and local_allowed(p.resolve(), settings)
    )


def list_folders(settings: Settings, path: str | None = None) -> dict[str, Any]:
    """The import roots, or the sub-folders and image count of one folder below them."""
    roots = _roots(settings)
    if path is None:
        return {
            "path": None,
            "parent": None,
            "roots": [str(r) for r in roots],
            "folders": [
                {"name": str(r), "path": str(r), "images": len(_images_in(settings, r, False))}
                for r in roots
                if r.is_dir()
            ],
            "images": 0,
            "sample": [],
        }
    folder = _below_root(settings, path)
    subs = sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and local_allowed(p.resolve(), settings)
    )
    images = _images_in(settings, folder, False)
    parent = folder.parent
    return {
        "path": str(folder),
        "parent": str(parent) if any(parent.is_relative_to(r) for r in roots) else None,
        "roots": [str(r) for r in roots],
        "folders": [
            {"name": p.name, "path": str(p), "images": len(_images_in(settings, p, False))}
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
    images = _images_in(rt.settings, folder, recursive)
    if not images:
        raise InvalidInput(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path!r}")
    specs = [ItemIn(data=str(p), external_id=_external_id("file:", str(p))) for p in images]
    return {"folder": str(folder), **_add_in_batches(rt, task_id, specs)}


@dataclass(frozen=True)
class Upload:
    filename: str
    raw: bytes


def save_uploads(rt: Runtime, task_id: int, files: list[Upload]) -> dict[str, Any]:
    """Uploaded images are kept in the task's folder under their content hash, then added as
    ``upload:<name>`` items. Files that are not images labelloop reads (or that declare too many
    pixels) are refused by name; if none is left, nothing is stored."""
    _require(rt, task_id, text=False)
    if not files:
        raise InvalidInput("no files uploaded")
    folder = rt.folder(task_id)
    specs: list[ItemIn] = []
    refused: list[str] = []
    reasons: list[str] = []
    for f in files:
        try:
            fmt = identify_image(f.raw, verify=True).format
        except FetchError as exc:
            refused.append(f.filename)
            reasons.append(f"{f.filename}: {exc.message}")
            continue
        digest = hashlib.sha256(f.raw).hexdigest()
        name = f"{digest}{UPLOAD_SUFFIXES.get(fmt, '.' + fmt.lower())}"
        path = folder.upload_path(name)
        if not path.exists():
            write_bytes_atomic(path, f.raw)
        specs.append(ItemIn(data=f"{UPLOAD_PREFIX}{name}", external_id=f"upload:{digest}"))
    if not specs:
        raise InvalidInput(f"none of the uploaded files is an image: {'; '.join(reasons)}")
    unique = list({s.external_id: s for s in specs}.values())
    return {**_add_in_batches(rt, task_id, unique), "refused": refused}


def _pick(header: list[str], wanted: str | None, known: tuple[str, ...], what: str) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted.strip().lower() not in lowered:
            columns = ", ".join(repr(h) for h in header)
            raise InvalidInput(f"the CSV has no column {wanted!r}; its columns are {columns}")
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
    if "\x00" in decoded:
        line = decoded.count("\n", 0, decoded.index("\x00")) + 1
        raise InvalidInput(f"the CSV holds a NUL character (line {line}); texts cannot hold one")
    reader = csv.reader(io.StringIO(decoded))
    try:
        rows = list(reader)
    except csv.Error as exc:
        why = (
            f"a field is longer than {MAX_TEXT:,} characters (the most a text item holds)"
            if "field limit" in str(exc)
            else "it is not well-formed CSV"
        )
        raise InvalidInput(f"the CSV cannot be read at line {reader.line_num}: {why}") from None
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
    """The bytes behind an item and their media type: for an image task, an image of a format
    labelloop reads, with that format's type (anything else is refused: never a file of another
    kind, never HTML or SVG); for a text task, the text as ``text/plain``."""
    with rt.session() as s:
        category = get_task_row(s, task_id).category
        item = s.scalar(select(Item).where(Item.id == item_id, Item.task_id == task_id))
        if item is None:
            raise NotFound(f"task {task_id} has no item {item_id}")
        data = item.data
    if is_text(category):
        return data.encode("utf-8"), "text/plain; charset=utf-8"
    content = read_link(data, rt.settings, rt.folder(task_id))
    return content.raw, content.media_type or identify_image(content.raw).mime
