"""How far a task is: per annotator and for the whole task, labelled, left, rate, time left.

Rates are measured over the last hour (``WINDOW_S``), from the first label in it (at least a
minute), so a person who just started is not credited with an hour of idleness; the time left is
the labels still needed at the task's rate. Agreement per annotator is
:func:`labelloop.loop.suspects.annotator_agreement` over the labels people share.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from labelloop.loop.labels import current_labels
from labelloop.loop.spec import TaskSpec
from labelloop.loop.suspects import annotator_agreement
from labelloop.runtime import Runtime
from labelloop.service import reservations
from labelloop.service.common import get_task_row
from labelloop.store.models import Annotation, Item, utcnow

#: The window rates are measured over.
WINDOW_S = 3600
#: The shortest span a rate is measured over (a burst of labels in a few seconds is no rate).
MIN_SPAN_S = 60


def aware(at: datetime) -> datetime:
    """A stored time in UTC (SQLite gives it back without its zone)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@dataclass
class _Rate:
    labels: int = 0
    recent: int = 0
    first_recent: datetime | None = None
    last: datetime | None = None

    def add(self, at: datetime, since: datetime) -> None:
        self.labels += 1
        self.last = at if self.last is None or at > self.last else self.last
        if at >= since:
            self.recent += 1
            if self.first_recent is None or at < self.first_recent:
                self.first_recent = at

    def per_hour(self, now: datetime) -> float | None:
        if not self.recent or self.first_recent is None:
            return None
        span = max(MIN_SPAN_S, (now - self.first_recent).total_seconds())
        return round(self.recent * 3600 / span, 2)


def progress(rt: Runtime, task_id: int) -> dict[str, Any]:
    now = utcnow()
    since = now - timedelta(seconds=WINDOW_S)
    with rt.session() as s:
        spec = TaskSpec.of(get_task_row(s, task_id))
        readable = set(
            s.scalars(select(Item.id).where(Item.task_id == task_id, Item.status != "failed"))
        )
        rows = s.execute(
            select(
                Annotation.item_id, Annotation.annotator, Annotation.labels, Annotation.created_at
            )
            .where(Annotation.task_id == task_id, Annotation.source == "human")
            .order_by(Annotation.id)
        ).all()
        model = current_labels(s, task_id, source="model")
        holders = reservations.held(s, task_id, now)
    overlap = spec.policy.overlap
    people: dict[int, set[str]] = {}
    reservations.apply_labels(people, [(i, a, labels) for i, a, labels, _ in rows])
    task_rate = _Rate()
    per: dict[str | None, _Rate] = {}
    latest: dict[int, dict[str, list[str]]] = {}
    for item_id, annotator, labels, created in rows:
        at = aware(created)
        task_rate.add(at, since)
        per.setdefault(annotator, _Rate()).add(at, since)
        if annotator is None:
            continue
        if labels is None:
            latest.get(item_id, {}).pop(annotator, None)
        else:
            latest.setdefault(item_id, {})[annotator] = list(labels)
    agreement = {str(a["annotator"]): a for a in annotator_agreement(latest)}
    holding: dict[str, int] = {}
    for by in holders.values():
        for who in by:
            holding[who] = holding.get(who, 0) + 1

    def model_only(i: int) -> bool:
        return i not in people and i in model

    needed = {i: max(0, overlap - len(people.get(i, ()))) for i in readable if not model_only(i)}
    left = sum(1 for n in needed.values() if n > 0)
    labels_needed = sum(needed.values())
    rate = task_rate.per_hour(now)
    on_items: dict[str, int] = {}
    for who_labelled in people.values():
        for who in who_labelled:
            on_items[who] = on_items.get(who, 0) + 1
    names = sorted(set(per) | set(holding), key=lambda n: (n is None, n or ""))
    return {
        "task_id": task_id,
        "overlap": overlap,
        "items": len(readable),
        "done": len(readable) - left,
        "left": left,
        "labels_needed": labels_needed,
        "human_labels": len(rows),
        "model_labelled": sum(1 for i in readable if model_only(i)),
        "rate_per_hour": rate,
        "eta_seconds": None if not rate else round(labels_needed / rate * 3600, 1),
        "window_seconds": WINDOW_S,
        "annotators": [
            _annotator(name, per.get(name, _Rate()), now, on_items, holding, agreement)
            for name in names
        ],
    }


def _annotator(
    name: str | None,
    rate: _Rate,
    now: datetime,
    on_items: dict[str, int],
    holding: dict[str, int],
    agreement: dict[str, dict[str, object]],
) -> dict[str, Any]:
    shared = agreement.get(name) if name is not None else None
    return {
        "annotator": name,
        "labels": rate.labels,
        "items": on_items.get(reservations.person(name), 0),
        "last_label_at": None if rate.last is None else rate.last.isoformat(),
        "recent_labels": rate.recent,
        "rate_per_hour": rate.per_hour(now),
        "holding": 0 if name is None else holding.get(name, 0),
        "agreement": None if shared is None else shared["agreement"],
        "shared_items": 0 if shared is None else shared["shared_items"],
    }
