"""Pre-labels: for one stored item, for data not stored, and for the next items to label."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from labelloop.errors import InvalidInput, NotFound
from labelloop.loop.features import ItemRef, featurize
from labelloop.loop.labels import current_labels
from labelloop.loop.prediction import store_predictions
from labelloop.loop.selection import Pool, similarity_vectors, strategy_for
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.service.common import get_task_row, task_spec
from labelloop.store.models import Item, ModelVersion, Prediction
from labelloop.store.upsert import record_audit_picks

NO_MODEL = "no_model"


def _as_answer(spec: TaskSpec, row: dict[str, Any] | Prediction) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    version = get("version")
    return {
        "item_id": get("item_id"),
        "status": "ok",
        "model_version": version,
        "labels": get("labels"),
        "score": get("score"),
        "scores": dict(zip(spec.labels, get("scores") or [], strict=True)),
    }


def current_predictions(
    rt: Runtime, spec: TaskSpec, item_ids: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """Pre-labels from the served version: stored ones when current, the rest computed and stored."""
    version = spec.served_version
    if version is None:
        return {}
    with rt.session() as s:
        stored = {
            p.item_id: p
            for p in s.scalars(
                select(Prediction).where(
                    Prediction.item_id.in_(list(item_ids)), Prediction.version == version
                )
            )
        }
    out = {i: _as_answer(spec, p) for i, p in stored.items()}
    missing = [i for i in item_ids if i not in stored]
    if missing:
        computed = rt.jobs.predict_items(spec, version, missing)
        store_predictions(rt, computed.rows)
        out.update({int(r["item_id"]): _as_answer(spec, r) for r in computed.rows})  # type: ignore[call-overload]
        for item_id, reason in computed.failed.items():
            out[item_id] = {
                "item_id": item_id,
                "status": "failed",
                "error": reason,
                "model_version": version,
                "labels": None,
                "score": None,
                "scores": None,
            }
    return out


def no_model(item_id: int | None = None) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "status": NO_MODEL,
        "model_version": None,
        "labels": None,
        "score": None,
        "scores": None,
    }


def get_prediction(rt: Runtime, task_id: int, item_id: int) -> dict[str, Any]:
    with rt.session() as s:
        spec = TaskSpec.of(get_task_row(s, task_id))
        item = s.get(Item, item_id)
        if item is None or item.task_id != task_id:
            raise NotFound(f"task {task_id} has no item {item_id}")
    if spec.served_version is None:
        return no_model(item_id)
    return current_predictions(rt, spec, [item_id])[item_id]


def predict(rt: Runtime, task_id: int, data: Sequence[str]) -> dict[str, Any]:
    """Pre-labels for data links (or texts) that are not stored as items: the seed's inference RPC."""
    if not data:
        raise InvalidInput("no items to predict")
    if len(data) > rt.settings.max_items_per_request:
        raise InvalidInput(f"at most {rt.settings.max_items_per_request} items per request")
    spec = task_spec(rt, task_id)
    if spec.served_version is None:
        return {"model_version": None, "status": NO_MODEL, "predictions": []}
    answers = rt.jobs.predict_data(spec, spec.served_version, data)
    preds: list[dict[str, Any]] = []
    for a in answers:
        if a.error is not None:
            preds.append(
                {
                    "status": "failed",
                    "error": a.error,
                    "labels": None,
                    "score": None,
                    "scores": None,
                }
            )
        else:
            assert a.scores is not None
            preds.append(
                {
                    "status": "ok",
                    "labels": a.labels,
                    "score": a.score,
                    "scores": dict(zip(spec.labels, a.scores, strict=True)),
                }
            )
    return {"model_version": spec.served_version, "status": "ok", "predictions": preds}


def _stable_order(salt: str, item_id: int) -> str:
    return hashlib.sha256(f"{salt}:{item_id}".encode()).hexdigest()


def next_items(rt: Runtime, task_id: int, limit: int) -> dict[str, Any]:
    """Items to label next, most useful first, each with its pre-label.

    The task's query strategy (:func:`labelloop.loop.selection.strategy_for`) chooses among the
    items no person or model has labelled (audits: among every item without a human label), from
    the priorities stored at the last promotion; picked audits are recorded.
    """
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    with rt.session() as s:
        spec = TaskSpec.of(get_task_row(s, task_id))
        human = current_labels(s, task_id, source="human")
        model = current_labels(s, task_id, source="model")
        rows = s.execute(
            select(Item.id, Item.external_id, Item.data, Item.content_hash).where(
                Item.task_id == task_id, Item.status != "failed"
            )
        ).all()
        open_items = {r.id: r for r in rows if r.id not in human}
        priority: dict[int, float] = {}
        if spec.served_version is not None:
            priority = {
                item_id: u
                for item_id, u in s.execute(
                    select(Prediction.item_id, Prediction.uncertainty).where(
                        Prediction.task_id == task_id, Prediction.version == spec.served_version
                    )
                ).all()
            }
        certified = spec.served_version is not None and _threshold(s, spec) is not None
    lottery = sorted(open_items, key=lambda i: _stable_order(spec.salt, i))
    pool = Pool(
        open=lottery,
        uncovered=[i for i in lottery if i not in model],
        priority=priority,
        human_labels=len(human),
        served=spec.served_version is not None,
        certified=certified,
        vectors=lambda ids: _vectors(rt, spec, [open_items[i] for i in ids]),
    )
    picked = strategy_for(spec.policy).query(pool, limit)
    if picked.audits:
        with rt.session() as s:
            record_audit_picks(s, task_id, picked.audits)
    chosen = picked.items
    preds = current_predictions(rt, spec, chosen) if spec.served_version is not None else {}
    return {
        "model_version": spec.served_version,
        "items": [
            {
                "id": i,
                "external_id": open_items[i].external_id,
                "data": open_items[i].data,
                "audit": i in picked.audits,
                "prediction": preds.get(i, no_model(i)),
            }
            for i in chosen
        ],
    }


def _threshold(session: Any, spec: TaskSpec) -> float | None:
    metrics = session.scalar(
        select(ModelVersion.metrics).where(
            ModelVersion.task_id == spec.id, ModelVersion.version == spec.served_version
        )
    )
    value = ((metrics or {}).get("auto_label") or {}).get("threshold")
    return None if value is None else float(value)


def _vectors(rt: Runtime, spec: TaskSpec, rows: list[Any]) -> tuple[list[int], Any, list[int]]:
    """Similarity vectors of items (features from the cache), for near-copy checks."""
    refs = [ItemRef(r.id, r.data, r.content_hash) for r in rows]
    batch = featurize(rt, spec.id, spec.category, spec.new_learner(), refs)
    ok = [rows[p].id for p in batch.ok]
    return ok, similarity_vectors(batch.features), list(batch.failed)
