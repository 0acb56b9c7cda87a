"""Label quality: suspected label errors and agreement between annotators."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select

from labelloop.errors import InvalidInput
from labelloop.loop.labels import current_labels, labelled_at
from labelloop.loop.spec import TaskSpec
from labelloop.loop.suspects import annotator_agreement
from labelloop.runtime import Runtime
from labelloop.service.common import get_task_row
from labelloop.store.models import Annotation, Item, ModelVersion


def suspects(rt: Runtime, task_id: int, limit: int = 100) -> dict[str, Any]:
    """Human labels the newest model confidently disagrees with (out of sample), ranked."""
    if not 1 <= limit <= 10_000:
        raise InvalidInput("limit must be between 1 and 10000")
    with rt.session() as s:
        spec = TaskSpec.of(get_task_row(s, task_id))
        mv = s.scalar(
            select(ModelVersion)
            .where(ModelVersion.task_id == task_id, ModelVersion.status == "ready")
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        agreement = _agreement(s, task_id)
        if mv is None:
            return {
                "version": None,
                "method": "confident-learning",
                "suspects": [],
                "annotators": agreement,
            }
        at = labelled_at(s, task_id, mv.label_revision)
        now = current_labels(s, task_id)
        version, revision = mv.version, mv.label_revision
    oos_path = rt.folder(task_id).version_dir(version) / "oos.npz"
    # Span answers are objects (pickled by numpy) in the store's own folder.
    with np.load(oos_path, allow_pickle=True) as oos:
        item_ids, scores = oos["item_ids"].tolist(), oos["scores"]
    given = [at[i][0] for i in item_ids]
    flagged = spec.kind.suspects(scores, spec.kind.encode(given, spec.labels), spec.labels)
    # A label corrected since the version was trained is no longer suspect.
    flagged = [f for f in flagged if now.get(item_ids[f.position]) == f.given]
    chosen = flagged[:limit]
    ids = [item_ids[f.position] for f in chosen]
    with rt.session() as s:
        items = {i.id: i for i in s.scalars(select(Item).where(Item.id.in_(ids)))}
        who = _annotators(s, ids)
    return {
        "version": version,
        "label_revision": revision,
        "method": "confident-learning",
        "checked": len(item_ids),
        "flagged": len(flagged),
        "suspects": [
            {
                "item_id": item_ids[f.position],
                "external_id": items[item_ids[f.position]].external_id,
                "data": items[item_ids[f.position]].data,
                "given": f.given,
                "suggested": f.suggested,
                "score": round(f.score, 6),
                "annotators": who.get(item_ids[f.position], []),
            }
            for f in chosen
            if item_ids[f.position] in items
        ],
        "annotators": agreement,
    }


def _annotators(session: Any, item_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    rows = session.execute(
        select(Annotation.item_id, Annotation.annotator)
        .where(Annotation.item_id.in_(item_ids), Annotation.source == "human")
        .order_by(Annotation.id)
    ).all()
    for item_id, annotator in rows:
        if annotator and annotator not in out.setdefault(item_id, []):
            out[item_id].append(annotator)
    return out


def _agreement(session: Any, task_id: int) -> list[dict[str, object]]:
    """Latest label of each annotator on each item, compared between annotators."""
    by_item: dict[int, dict[str, list[str]]] = {}
    rows = session.execute(
        select(Annotation.item_id, Annotation.annotator, Annotation.labels)
        .where(
            Annotation.task_id == task_id,
            Annotation.source == "human",
            Annotation.annotator.is_not(None),
        )
        .order_by(Annotation.id)
    ).all()
    for item_id, annotator, labels in rows:
        if labels is None:
            by_item.get(item_id, {}).pop(annotator, None)
        else:
            by_item.setdefault(item_id, {})[annotator] = list(labels)
    return annotator_agreement(by_item)
