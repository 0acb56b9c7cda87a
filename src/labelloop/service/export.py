"""The labelled data set out, streamed as JSON lines or CSV.

CSV cells are opened by spreadsheets, which run a cell that starts with ``=``, ``+``, ``-`` or
``@`` (or a tab or carriage return before one) as a formula: such a text cell is written with a
leading ``'`` so that it shows as text. JSON lines carry every value unchanged.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from labelloop.errors import InvalidInput
from labelloop.kinds import TaskKind
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.service.common import get_task_row
from labelloop.store.models import Annotation, Item

PAGE = 1000
FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv", "conll": "text/plain"}
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text, never runs as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def _csv_row(kind: TaskKind, row: dict[str, Any]) -> dict[str, object]:
    value = row[kind.value_field]
    return {k: _cell(v) for k, v in {**row, kind.value_field: kind.csv_cell(value)}.items()}


def _current(rt: Runtime, task_id: int, item_ids: list[int]) -> dict[int, Annotation]:
    """The label each item carries now: its newest human label, else its newest model label."""
    best: dict[int, Annotation] = {}
    with rt.session() as s:
        rows = s.scalars(
            select(Annotation).where(Annotation.item_id.in_(item_ids)).order_by(Annotation.id)
        ).all()
    human: dict[int, Annotation | None] = {}
    model: dict[int, Annotation] = {}
    for a in rows:
        if a.source == "human":
            human[a.item_id] = a if a.labels is not None else None
        elif a.labels is not None:
            model[a.item_id] = a
    for item_id in item_ids:
        h = human.get(item_id)
        if h is not None:
            best[item_id] = h
        elif item_id not in human and item_id in model:
            best[item_id] = model[item_id]
    return best


def export_rows(rt: Runtime, task_id: int, kind: TaskKind) -> Iterator[dict[str, Any]]:
    """The task's items with their current values, in the kind's columns."""
    last = 0
    while True:
        with rt.session() as s:
            page = s.execute(
                select(Item.id, Item.external_id, Item.data, Item.status)
                .where(Item.task_id == task_id, Item.id > last)
                .order_by(Item.id)
                .limit(PAGE)
            ).all()
        if not page:
            return
        last = page[-1].id
        current = _current(rt, task_id, [r.id for r in page])
        for r in page:
            a = current.get(r.id)
            yield {
                "item_id": r.id,
                "external_id": r.external_id,
                "data": r.data,
                "status": r.status,
                **kind.export_fields(None if a is None else a.labels),
                "source": None if a is None else a.source,
                "annotator": None if a is None else a.annotator,
                "model_version": None if a is None else a.model_version,
                "score": None if a is None else a.score,
                "revision": None if a is None else a.id,
            }


def _conll(kind: TaskKind, row: dict[str, Any]) -> Iterator[str]:
    """A labelled text's token lines and a blank line (unlabelled texts are left out)."""
    value = row[kind.value_field]
    if value is not None:
        yield "".join(line + "\n" for line in kind.conll_lines(row["data"], value)) + "\n"


def export(rt: Runtime, task_id: int, fmt: str) -> Iterator[str]:
    """Lines of the export; the task is checked before the first line is produced."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    with rt.session() as s:
        kind = TaskSpec.of(get_task_row(s, task_id)).kind
    rows = export_rows(rt, task_id, kind)
    first = next(rows, None)

    if fmt == "conll":
        kind.conll_lines("", [])  # refuses other kinds before the first line

    def lines() -> Iterator[str]:
        if fmt == "conll":
            for row in [first] if first is not None else []:
                yield from _conll(kind, row)
            for row in rows:
                yield from _conll(kind, row)
            return
        if fmt == "jsonl":
            if first is not None:
                yield json.dumps(first) + "\n"
            for row in rows:
                yield json.dumps(row) + "\n"
            return
        fields = [
            "item_id",
            "external_id",
            "data",
            "status",
            kind.value_field,
            "source",
            "annotator",
            "model_version",
            "score",
            "revision",
        ]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        for row in [first] if first is not None else []:
            writer.writerow(_csv_row(kind, row))
        for row in rows:
            writer.writerow(_csv_row(kind, row))
            if buf.tell() > 64_000:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    return lines()
