"""Getting data in without code: folders of images on the server, uploaded images, CSVs of texts;
and an item's content back out, so that a browser can show it.

Folders are only ever read below the import roots the operator configured (``--import-root``);
uploads are written into the task's own folder, which is below the data root, and items name them
by reference (``upload:<sha256>.<ext>``), never by a path. Content goes back out only as what the
task's kind can show: an image of a known format with its own type, or text.

Nothing is guessed and nothing is dropped silently: a CSV names its text column (``text``, or the
one the person picks), every file or line an import leaves out is reported by name with the
reason, and labels that come with the data (one folder per class, a label column, the spans or
labels of a JSON line) are recorded as human labels from ``imported`` only when they are labels of
the task, or when the person asked for them to be added (before the task has a model).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labelloop.config import Settings
from labelloop.datastore import write_bytes_atomic
from labelloop.errors import Conflict, FetchError, ForbiddenPath, InvalidInput, NotFound
from labelloop.fetch import UPLOAD_PREFIX, identify_image, local_allowed, read_link
from labelloop.kinds.base import TaskKind, Value
from labelloop.kinds.registry import kind_for
from labelloop.loop.features import is_text
from labelloop.loop.scheduling import active_training, lock_task
from labelloop.runtime import Runtime
from labelloop.schemas import Skipped, clean_label
from labelloop.service.common import get_task_row
from labelloop.service.items import MAX_DATA_CHARS, ItemIn, add_items
from labelloop.service.labelling import AnnotationIn, submit
from labelloop.store.models import Annotation, Item, ModelVersion

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
MAX_LISTED = 500
BATCH = 1000
#: The column a CSV's texts are read from unless the person names another: never guessed.
TEXT_COLUMN = "text"
ID_COLUMNS = ("id", "external_id", "key")
#: Labels of one item in a label column of a multi-label task are separated by this.
LABEL_SEPARATOR = "|"
#: The annotator imported labels are recorded under.
IMPORTED = "imported"
#: The most skipped files (or lines) an answer names; the total is counted.
MAX_REPORTED = 1000
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
    ids: dict[str, int] = {}
    for start in range(0, len(specs), BATCH):
        out = add_items(rt, task_id, specs[start : start + BATCH])
        created += out["created"]
        existing += out["existing"]
        ids.update({it["external_id"]: it["id"] for it in out["items"] if it["external_id"]})
    return {"created": created, "existing": existing, "ids": ids}


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


def _text_id(text: str) -> str:
    """Without an id, the text names the item: another file (CSV or JSON lines, or the same one
    again) adds only texts the task does not have (a row number would clash with an earlier
    file's rows)."""
    return _external_id("csv:", f"text:{hashlib.sha256(text.encode('utf-8')).hexdigest()}")


# --- labels that come with the data -------------------------------------------------------------


def _quoted(labels: Iterable[str]) -> str:
    return ", ".join(f'"{label}"' for label in labels)


def _label(value: str, where: str) -> str:
    try:
        return clean_label(value)
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}") from None


def _new_labels(
    rt: Runtime, task_id: int, found: Iterable[str], add: bool, where: str
) -> list[str]:
    """The labels of ``found`` the task does not have yet, refused unless ``add`` (and then only
    while the task has no model: a trained model answers for the labels it was trained on)."""
    with rt.session() as s:
        task = get_task_row(s, task_id)
        unknown = [label for label in dict.fromkeys(found) if label not in task.labels]
        if not unknown:
            return []
        if not add:
            shown = _quoted(unknown[:20]) + (" …" if len(unknown) > 20 else "")
            raise InvalidInput(
                f"{where} name labels the task does not have: {shown}; the task's labels are "
                f"{_quoted(task.labels)}. Ask for them to be added (add_labels), or fix the data"
            )
        trained = s.scalar(select(ModelVersion.id).where(ModelVersion.task_id == task_id).limit(1))
        if trained is not None or active_training(s, task_id) is not None:
            raise Conflict(
                f"the task has a model already, so its labels are fixed; {_quoted(unknown[:20])} "
                "cannot be added: create a new task with them"
            )
    return unknown


def _record_labels(
    rt: Runtime,
    task_id: int,
    labelled: dict[str, Value],
    ids: dict[str, int],
    new: list[str],
    field: str = "labels",
) -> int:
    """Add ``new`` labels to the task, then record each item's value (by external id; in the
    kind's ``field``: labels, or spans) as a human label from ``imported``: once, for items that
    no person has labelled yet (an import run again adds nothing)."""
    if new:
        with rt.session() as s:
            task = lock_task(s, task_id)
            if task is None:
                raise NotFound(f"no task {task_id}")
            task.labels = [*task.labels, *(x for x in new if x not in task.labels)]
    by_item = {ids[ext]: labels for ext, labels in labelled.items() if ext in ids}
    if not by_item:
        return 0
    with rt.session() as s:
        done = set(
            s.scalars(
                select(Annotation.item_id).where(
                    Annotation.task_id == task_id,
                    Annotation.source == "human",
                    Annotation.item_id.in_(list(by_item)),
                )
            )
        )
    todo = [
        AnnotationIn.model_validate(
            {"item_id": i, field: value, "annotator": IMPORTED, "shown_none": True}
        )
        for i, value in by_item.items()
        if i not in done
    ]
    step = rt.settings.max_items_per_request
    for start in range(0, len(todo), step):
        submit(rt, task_id, todo[start : start + step])
    return len(todo)


# --- folders ------------------------------------------------------------------------------------


def _walk(
    settings: Settings, folder: Path, recursive: bool
) -> tuple[list[Path], list[Skipped], int]:
    """The images below a folder (in sub-folders too when ``recursive``), and every file left
    out with the reason: not an image, a link out of the import roots, a hidden folder."""
    images: list[Path] = []
    skipped: list[Skipped] = []
    total = 0

    def skip(path: Path, reason: str) -> None:
        nonlocal total
        total += 1
        if len(skipped) < MAX_REPORTED:
            skipped.append({"file": str(path.relative_to(folder)), "reason": reason})

    for top, dirs, files in os.walk(folder):
        here = Path(top)
        for d in sorted(dirs):
            path = here / d
            if not recursive:
                continue
            if d.startswith("."):
                skip(path, "a hidden folder: not read")
            elif path.is_symlink():
                skip(path, "a link to a folder: not followed")
        dirs[:] = [] if not recursive else sorted(d for d in dirs if not d.startswith("."))
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for f in sorted(files):
            path = here / f
            suffix = path.suffix.lower()
            if suffix not in IMAGE_SUFFIXES:
                kind = f"a {suffix} file" if suffix else "a file without an extension"
                skip(path, f"{kind}, not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            elif not path.is_file():
                skip(path, "not a regular file")
            elif not local_allowed(path.resolve(), settings):
                skip(path, "a link to a file outside the import roots")
            else:
                images.append(path)
    return sorted(images), skipped, total


def import_folder(
    rt: Runtime,
    task_id: int,
    path: str,
    recursive: bool = True,
    labels_from_folders: bool = False,
    add_labels: bool = False,
) -> dict[str, Any]:
    """Every image of a folder below an import root becomes an item (again: nothing added twice).

    With ``labels_from_folders`` (one folder per class), an image in ``<path>/<name>/...`` gets the
    label ``name``; images directly in ``path`` get none.
    """
    _require(rt, task_id, text=False)
    folder = _below_root(rt.settings, path)
    images, skipped, total = _walk(rt.settings, folder, recursive or labels_from_folders)
    if not images:
        why = f"; left out: {skipped[0]['file']} ({skipped[0]['reason']}) …" if skipped else ""
        raise InvalidInput(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path!r}{why}")
    specs = [ItemIn(data=str(p), external_id=_external_id("file:", str(p))) for p in images]
    labelled: dict[str, list[str]] = {}
    if labels_from_folders:
        for p, spec in zip(images, specs, strict=True):
            parts = p.relative_to(folder).parts
            if len(parts) > 1 and spec.external_id is not None:
                labelled[spec.external_id] = [_label(parts[0], f"the folder {parts[0]!r}")]
        if not labelled:
            raise InvalidInput(
                f"{path!r} has no sub-folders with images; with labels_from_folders each class "
                "is a sub-folder (for example cats/ and dogs/) holding its images"
            )
    new = _new_labels(
        rt, task_id, (x for ls in labelled.values() for x in ls), add_labels, "the folders"
    )
    added = _add_in_batches(rt, task_id, specs)
    n = _record_labels(rt, task_id, labelled, added["ids"], new)
    return {
        "folder": str(folder),
        "created": added["created"],
        "existing": added["existing"],
        "labelled": n,
        "labels_added": new,
        "skipped": skipped,
        "skipped_total": total,
    }


# --- uploads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    filename: str
    raw: bytes


def save_uploads(rt: Runtime, task_id: int, files: list[Upload]) -> dict[str, Any]:
    """Uploaded images are kept in the task's folder under their content hash, then added as
    ``upload:<name>`` items. Files that are not images labelloop reads (or that declare too many
    pixels) are left out, each by name with the reason; if none is left, nothing is stored."""
    _require(rt, task_id, text=False)
    if not files:
        raise InvalidInput("no files uploaded")
    folder = rt.folder(task_id)
    specs: list[ItemIn] = []
    skipped: list[Skipped] = []
    for f in files:
        try:
            fmt = identify_image(f.raw, verify=True).format
        except FetchError as exc:
            skipped.append({"file": f.filename, "reason": exc.message})
            continue
        digest = hashlib.sha256(f.raw).hexdigest()
        name = f"{digest}{UPLOAD_SUFFIXES.get(fmt, '.' + fmt.lower())}"
        path = folder.upload_path(name)
        if not path.exists():
            write_bytes_atomic(path, f.raw)
        specs.append(ItemIn(data=f"{UPLOAD_PREFIX}{name}", external_id=f"upload:{digest}"))
    if not specs:
        reasons = "; ".join(f"{x['file']}: {x['reason']}" for x in skipped)
        raise InvalidInput(f"none of the uploaded files is an image: {reasons}")
    unique = list({s.external_id: s for s in specs}.values())
    added = _add_in_batches(rt, task_id, unique)
    return {
        "created": added["created"],
        "existing": added["existing"],
        "refused": [x["file"] for x in skipped],
        "skipped": skipped,
    }


# --- CSV ----------------------------------------------------------------------------------------


def _column(header: list[str], wanted: str, what: str) -> int:
    lowered = [h.strip().lower() for h in header]
    if wanted.strip().lower() not in lowered:
        columns = ", ".join(repr(h) for h in header)
        raise InvalidInput(
            f"the CSV has no column {wanted!r} for the {what}; its columns are {columns}"
        )
    return lowered.index(wanted.strip().lower())


def _text_column(header: list[str], wanted: str | None) -> int:
    """The column of the texts: the one named, else ``text``; never a guess."""
    if wanted is not None:
        return _column(header, wanted, "texts")
    lowered = [h.strip().lower() for h in header]
    if TEXT_COLUMN in lowered:
        return lowered.index(TEXT_COLUMN)
    columns = ", ".join(repr(h) for h in header)
    raise InvalidInput(
        f"the CSV has no column named {TEXT_COLUMN!r}; its columns are {columns}. Say which "
        "column holds the texts (text_column), or name that column 'text'"
    )


def _id_column(header: list[str], wanted: str | None) -> int | None:
    if wanted is not None:
        return _column(header, wanted, "ids")
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in ID_COLUMNS if n in lowered), None)


def _read_csv(raw: bytes) -> list[list[str]]:
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
    return rows


def import_csv(
    rt: Runtime,
    task_id: int,
    raw: bytes,
    text_column: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    add_labels: bool = False,
) -> dict[str, Any]:
    """Each row of a CSV (with a header) becomes a text item: the column ``text`` (or the one
    named: a CSV without it is refused, never guessed), ``id`` as its external id when there is
    one (else the text's hash: the same text is not added twice), and, when ``label_column`` is named, its labels as human labels (``|`` between the labels
    of a multi-label task; an empty cell gives none)."""
    _require(rt, task_id, text=True)
    with rt.session() as s:
        multi = get_task_row(s, task_id).extra == "multi-label"
    rows = _read_csv(raw)
    header, body = rows[0], rows[1:]
    text_at = _text_column(header, text_column)
    id_at = _id_column(header, id_column)
    label_at = None if label_column is None else _column(header, label_column, "labels")
    specs: list[ItemIn] = []
    labelled: dict[str, list[str]] = {}
    skipped: list[Skipped] = []
    n_skipped = 0
    for n, row in enumerate(body, start=2):
        text = row[text_at].strip() if text_at < len(row) else ""
        if not text:
            n_skipped += 1
            if len(skipped) < MAX_REPORTED:
                skipped.append({"file": f"line {n}", "reason": "no text"})
            continue
        ext = row[id_at].strip() if id_at is not None and id_at < len(row) else ""
        spec = ItemIn(data=text, external_id=_external_id("csv:", ext) if ext else _text_id(text))
        specs.append(spec)
        cell = row[label_at].strip() if label_at is not None and label_at < len(row) else ""
        if cell and spec.external_id is not None:
            parts = [p for p in cell.split(LABEL_SEPARATOR)] if multi else [cell]
            labels = [_label(p, f"line {n}") for p in parts if p.strip()]
            labelled.setdefault(spec.external_id, list(dict.fromkeys(labels)))
    if not specs:
        raise InvalidInput("the CSV has no non-empty texts")
    seen: dict[str | None, ItemIn] = {}
    for spec in specs:
        seen.setdefault(spec.external_id, spec)
    new = _new_labels(
        rt,
        task_id,
        (x for ls in labelled.values() for x in ls),
        add_labels,
        "the label column's values",
    )
    added = _add_in_batches(rt, task_id, list(seen.values()))
    n_labelled = _record_labels(rt, task_id, labelled, added["ids"], new)
    return {
        "created": added["created"],
        "existing": added["existing"],
        "skipped": n_skipped,
        "skipped_rows": skipped,
        "text_column": header[text_at],
        "label_column": None if label_at is None else header[label_at],
        "labelled": n_labelled,
        "labels_added": new,
    }


# --- JSON lines -------------------------------------------------------------------------------

#: Fields a line's text is read from, in order: ``text`` (Prodigy, doccano and most tools),
#: ``data`` (labelloop's own export: a string; Label Studio's tasks: ``{"text": ...}``).
TEXT_FIELDS = ("text", "data")
#: Prodigy's answers that are not labels: such lines are left out (with the reason).
NOT_ANSWERS = ("reject", "ignore")


class _Skip(Exception):
    """A line left out, with the reason in people's words."""


def _line_text(obj: dict[str, Any]) -> str:
    for field in TEXT_FIELDS:
        value = obj.get(field)
        if isinstance(value, dict):  # Label Studio's task: {"data": {"text": ...}}
            texts = [v for v in value.values() if isinstance(v, str)]
            value = value.get("text", texts[0] if len(texts) == 1 else None)
        if isinstance(value, str):
            if not value.strip():
                raise _Skip("the text is empty")
            if "\x00" in value:
                raise _Skip("the text holds a NUL character; texts cannot hold one")
            if len(value) > MAX_TEXT:
                raise _Skip(f"the text is longer than {MAX_TEXT:,} characters")
            return value
    raise _Skip('no text: give it as "text" (or Label Studio\'s "data": {"text": ...})')


def _line_id(obj: dict[str, Any], text: str) -> str:
    """The item's external id: labelloop's own (``external_id``, as exported), another tool's
    ``id`` or ``key`` (prefixed), else the text's."""
    own = obj.get("external_id")
    if isinstance(own, str | int) and not isinstance(own, bool) and str(own).strip():
        return _external_id("", str(own).strip())
    for field in ("id", "key"):
        other = obj.get(field)
        if isinstance(other, str | int) and not isinstance(other, bool) and str(other).strip():
            return _external_id("jsonl:", str(other).strip())
    return _text_id(text)


def _span(raw: Any) -> dict[str, Any]:
    """One span: ``{"start", "end", "label"}`` (labelloop, Prodigy) or ``[start, end, label]``
    (doccano)."""
    if isinstance(raw, list | tuple) and len(raw) == 3:
        raw = dict(zip(("start", "end", "label"), raw, strict=True))
    if not isinstance(raw, dict):
        raise _Skip('a span must be {"start": …, "end": …, "label": …}')
    start, end, label = raw.get("start"), raw.get("end"), raw.get("label")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)):
        raise _Skip("a span's start and end must be whole numbers (character offsets)")
    if not isinstance(label, str):
        raise _Skip("a span needs its label as text")
    return {"start": start, "end": end, "label": _label(label, "a span's label")}


def _labelstudio_results(obj: dict[str, Any]) -> list[Any] | None:
    """The result of a Label Studio task's last annotation that was not cancelled."""
    done = [
        a
        for a in obj.get("annotations") or []
        if isinstance(a, dict) and not a.get("was_cancelled") and isinstance(a.get("result"), list)
    ]
    return done[-1]["result"] if done else None


#: Other tools' fields for a kind's value: doccano's ``label`` (a label, or ``[start, end, label]``
#: triples), spaCy-style ``entities``.
VALUE_ALIASES = {"spans": ("entities", "label"), "labels": ("label",)}


def _line_value(obj: dict[str, Any], kind: TaskKind) -> Value | None:
    """The value a line gives (``None``: the line is an item without one): the kind's field
    (``spans``, ``labels``), another tool's name for it, or a Label Studio task's last
    annotation."""
    if obj.get("answer") in NOT_ANSWERS:
        raise _Skip(f"answered {obj['answer']!r} in Prodigy: not a label")
    field = kind.value_field
    raw = next(
        (obj[k] for k in (field, *VALUE_ALIASES.get(field, ())) if obj.get(k) is not None), None
    )
    if raw is None and isinstance(obj.get("annotations"), list):
        results = _labelstudio_results(obj) or []
        control = next((r.get("from_name") for r in results if isinstance(r, dict)), None)
        return None if control is None else kind.labelstudio_value(results, str(control))
    if raw is None:
        return None
    if field == "spans":
        if not isinstance(raw, list):
            raise _Skip("spans must be a list")
        return [_span(x) for x in raw]
    labels = [raw] if isinstance(raw, str) else raw
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise _Skip("labels must be a label or a list of labels")
    return [_label(x, "a label") for x in labels]


def _json_entries(raw: bytes) -> tuple[str, list[tuple[int, str]]]:
    """The entries of a JSON lines file (one object a line), or of a JSON array (as Label Studio
    exports): what an entry is called, and each entry's number and JSON text."""
    try:
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the file is not UTF-8 text") from None
    if decoded.lstrip().startswith("["):
        try:
            array = json.loads(decoded)
        except ValueError as exc:
            raise InvalidInput(f"the file is not a JSON array nor JSON lines: {exc}") from None
        return "entry", [(n, json.dumps(x)) for n, x in enumerate(array, start=1)]
    return "line", [(n, t) for n, t in enumerate(decoded.splitlines(), start=1) if t.strip()]


@dataclass
class _Parsed:
    """What a JSON lines file holds: items, their values by external id (and the entry that
    gave each), and the entries left out."""

    specs: dict[str, ItemIn]
    values: dict[str, tuple[str, Value]]
    skipped: list[Skipped]
    n_skipped: int = 0

    def skip(self, where: str, reason: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < MAX_REPORTED:
            self.skipped.append({"file": where, "reason": reason})


def _parse_jsonl(raw: bytes, kind: TaskKind, labels: list[str]) -> _Parsed:
    """Each entry checked on its own: one that cannot be read, has no text or a value the kind
    refuses (offsets out of the text, overlapping spans, ...) is left out with the reason."""
    what, entries = _json_entries(raw)
    out = _Parsed({}, {}, [])
    first: dict[str, str] = {}
    for n, line in entries:
        where = f"{what} {n}"
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise _Skip("not a JSON object")
            text = _line_text(obj)
            ext = _line_id(obj, text)
            if ext in first:
                raise _Skip(f"the same item as {first[ext]}")
            value = _line_value(obj, kind)
            if value is not None:  # labels are checked against the task once all are read
                kind.validate(value, [*labels, *kind.classes(value)], where, text)
                value = kind.normalize(value)
        except json.JSONDecodeError as exc:
            out.skip(where, f"not JSON ({exc.msg} at character {exc.pos + 1})")
            continue
        except _Skip as exc:
            out.skip(where, str(exc))
            continue
        except InvalidInput as exc:
            out.skip(where, exc.message.removeprefix(f"{where}: "))
            continue
        first[ext] = where
        out.specs[ext] = ItemIn(data=text, external_id=ext)
        if value is not None:
            out.values[ext] = (where, value)
    return out


def _other_texts(rt: Runtime, parsed: _Parsed, ids: dict[str, int]) -> None:
    """Values whose item the task already had with another text are left out: their offsets
    point into the text of the line, not the item's."""
    wanted = {ids[ext]: ext for ext in parsed.values if ext in ids}
    with rt.session() as s:
        for start in range(0, len(wanted), 500):
            chunk = list(wanted)[start : start + 500]
            for item_id, data in s.execute(
                select(Item.id, Item.data).where(Item.id.in_(chunk))
            ).all():
                ext = wanted[int(item_id)]
                if data != parsed.specs[ext].data:
                    where, _ = parsed.values.pop(ext)
                    parsed.skip(where, f"the task's item {ext!r} has another text")


def import_jsonl(rt: Runtime, task_id: int, raw: bytes, add_labels: bool = False) -> dict[str, Any]:
    """Each line of a JSON lines file (or entry of a JSON array) becomes a text item, and its
    value, when it has one, a human label from ``imported``: spans (``{"text", "spans": [{"start",
    "end", "label"}]}``, as labelloop exports and Prodigy writes; doccano's ``[start, end,
    label]`` triples; a Label Studio task's last annotation) or, for a classification task, its
    ``labels``. Entries left out are in ``skipped_lines``, each with the reason."""
    _require(rt, task_id, text=True)
    with rt.session() as s:
        task = get_task_row(s, task_id)
        kind, labels = kind_for(task.category, task.extra), list(task.labels)
    parsed = _parse_jsonl(raw, kind, labels)
    if not parsed.specs:
        why = (
            f": {parsed.skipped[0]['file']}: {parsed.skipped[0]['reason']}"
            if parsed.skipped
            else ""
        )
        raise InvalidInput(f"the file has no texts to add{why}")
    new = _new_labels(
        rt,
        task_id,
        (x for _, value in parsed.values.values() for x in sorted(kind.classes(value))),
        add_labels,
        "the file's spans" if kind.value_field == "spans" else "the file's labels",
    )
    added = _add_in_batches(rt, task_id, list(parsed.specs.values()))
    if kind.needs_text:
        _other_texts(rt, parsed, added["ids"])
    values = {ext: value for ext, (_, value) in parsed.values.items()}
    n_labelled = _record_labels(rt, task_id, values, added["ids"], new, kind.value_field)
    return {
        "created": added["created"],
        "existing": added["existing"],
        "skipped": parsed.n_skipped,
        "skipped_lines": parsed.skipped,
        "labelled": n_labelled,
        "labels_added": new,
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
