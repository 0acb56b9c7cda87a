"""The item browser: a task's items filtered by where their label came from, the label, the label
error flag, who labelled them and whether they could be read; a page at a time.

An item's label is its newest human label, else its newest model label (as the export has it);
its annotators are the people whose labels it carries now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select

from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.service import quality, reservations
from labelloop.service.common import get_task_row
from labelloop.store.models import Annotation, Item

Source = Literal["human", "model", "none"]
Status = Literal["pending", "ready", "failed"]
#: The longest preview of an item's data in the list (the whole item is one GET away).
PREVIEW_CHARS = 300
#: Label-error flags the filter considers (the most suspicious first).
MAX_SUSPECTS = 10_000


def preview(data: str, n: int = PREVIEW_CHARS) -> str:
    """``data`` shortened to ``n`` characters, keeping its start and its end (a file's name)."""
    if len(data) <= n:
        return data
    head = n // 2
    return data[: head - 1] + "…" + data[len(data) - (n - head) :]


@dataclass
class _Label:
    labels: list[str]
    source: Literal["human", "model"]
    model_version: int | None = None
    score: float | None = None


@dataclass(frozen=True)
class Filters:
    source: Source | None = None
    label: str | None = None
    suspect: bool | None = None
    annotator: str | None = None
    status: Status | None = None


def _current(rows: Sequence[Any]) -> dict[int, _Label]:
    human: dict[int, _Label | None] = {}
    model: dict[int, _Label | None] = {}
    for item_id, labels, source, version, score in rows:
        if source == "human":
            human[item_id] = None if labels is None else _Label(list(labels), "human")
        else:
            model[item_id] = (
                None if labels is None else _Label(list(labels), "model", version, score)
            )
    out = {i: m for i, m in model.items() if m is not None and i not in human}
    out.update({i: h for i, h in human.items() if h is not None})
    return out


def list_items(
    rt: Runtime, task_id: int, filters: Filters, offset: int = 0, limit: int = 50
) -> dict[str, Any]:
    """The items that pass every filter given, by id, from ``offset``; and how many pass."""
    with rt.session() as s:
        TaskSpec.of(get_task_row(s, task_id))
        statuses = dict(
            s.execute(
                select(Item.id, Item.status).where(Item.task_id == task_id).order_by(Item.id)
            ).all()
        )
        rows = s.execute(
            select(
                Annotation.item_id,
                Annotation.labels,
                Annotation.source,
                Annotation.model_version,
                Annotation.score,
            )
            .where(Annotation.task_id == task_id)
            .order_by(Annotation.id)
        ).all()
        people = reservations.labellers(s, task_id)
    current = _current(rows)
    flagged = {int(f["item_id"]) for f in quality.suspects(rt, task_id, MAX_SUSPECTS)["suspects"]}

    def passes(item_id: int) -> bool:
        label = current.get(item_id)
        if filters.status is not None and statuses[item_id] != filters.status:
            return False
        if filters.source is not None and (label.source if label else "none") != filters.source:
            return False
        if filters.label is not None and (label is None or filters.label not in label.labels):
            return False
        if filters.suspect is not None and (item_id in flagged) != filters.suspect:
            return False
        return filters.annotator is None or filters.annotator in people.get(item_id, ())

    matching = [i for i in statuses if passes(i)]
    page = matching[offset : offset + limit]
    with rt.session() as s:
        items = {
            r.id: r
            for r in s.execute(
                select(Item.id, Item.external_id, Item.data, Item.status, Item.error).where(
                    Item.id.in_(page)
                )
            )
        }
    out = []
    for item_id in page:
        if item_id not in items:
            continue  # deleted meanwhile
        r, label = items[item_id], current.get(item_id)
        out.append(
            {
                "id": item_id,
                "external_id": r.external_id,
                "preview": preview(r.data),
                "status": r.status,
                "error": r.error,
                "labels": None if label is None else label.labels,
                "label_source": None if label is None else label.source,
                "annotators": sorted(
                    who for who in people.get(item_id, ()) if who != reservations.ANONYMOUS
                ),
                "model_version": None if label is None else label.model_version,
                "score": None if label is None else label.score,
                "suspect": item_id in flagged,
            }
        )
    return {"total": len(matching), "offset": offset, "limit": limit, "items": out}
