"""Pre-labels: for one stored item, for data not stored, and for the next items to label."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from labelloop.errors import Conflict, InvalidInput, NotFound
from labelloop.loop.features import ItemRef, featurize
from labelloop.loop.labels import current_labels, label_revision
from labelloop.loop.prediction import store_predictions
from labelloop.loop.scheduling import lock_task
from labelloop.loop.selection import Pool, Query, similarity_vectors, strategy_for
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.service import reservations
from labelloop.service.common import get_task_row, task_spec
from labelloop.store.models import Item, ModelVersion, Prediction, utcnow
from labelloop.store.upsert import record_audit_picks

NO_MODEL = "no_model"


def _as_answer(spec: TaskSpec, row: dict[str, Any] | Prediction) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    version = get("version")
    return {
        "item_id": get("item_id"),
        "status": "ok",
        "model_version": version,
        **spec.kind.prediction_fields(get("labels"), get("scores") or [], spec.labels),
        "score": get("score"),
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
                **spec.kind.prediction_fields(None, None, spec.labels),
                "score": None,
            }
    return out


def no_model(item_id: int | None = None, spec: TaskSpec | None = None) -> dict[str, Any]:
    """No pre-label: the kind's fields (``labels`` and ``scores``, or ``spans``) are null."""
    fields = {"labels": None, "scores": None}
    if spec is not None:
        fields = spec.kind.prediction_fields(None, None, spec.labels)
    return {"item_id": item_id, "status": NO_MODEL, "model_version": None, **fields, "score": None}


def get_prediction(rt: Runtime, task_id: int, item_id: int) -> dict[str, Any]:
    with rt.session() as s:
        spec = TaskSpec.of(get_task_row(s, task_id))
        item = s.get(Item, item_id)
        if item is None or item.task_id != task_id:
            raise NotFound(f"task {task_id} has no item {item_id}")
    if spec.served_version is None:
        return no_model(item_id, spec)
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
                    **spec.kind.prediction_fields(None, None, spec.labels),
                    "score": None,
                }
            )
        else:
            assert a.scores is not None
            preds.append(
                {
                    "status": "ok",
                    **spec.kind.prediction_fields(a.labels, a.scores, spec.labels),
                    "score": a.score,
                }
            )
    return {"model_version": spec.served_version, "status": "ok", "predictions": preds}


def _stable_order(salt: str, item_id: int) -> str:
    return hashlib.sha256(f"{salt}:{item_id}".encode()).hexdigest()


def next_items(
    rt: Runtime, task_id: int, limit: int, annotator: str | None = None
) -> dict[str, Any]:
    """Items to label next, most useful first, each with its pre-label.

    The task's query strategy (:func:`labelloop.loop.selection.strategy_for`) chooses among the
    items no person or model has labelled (audits: among every item without a human label), from
    the priorities stored at the last promotion; picked audits are recorded. Items other
    annotators hold are left out. With ``annotator``, what is handed out is reserved for them for
    a lease, and the items they hold already come first (:mod:`labelloop.service.reservations`);
    with an overlap above 1, items that some but too few people labelled come next.
    """
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    now = utcnow()
    with rt.session() as s:
        task = get_task_row(s, task_id)
        if task.archived_at is not None:
            raise Conflict(f"task {task_id} is archived: restore it to label its items")
        spec = TaskSpec.of(task)
        revision = label_revision(s, task_id)
        holdings = reservations.Holdings(
            spec.policy.overlap,
            annotator,
            reservations.labellers(s, task_id),
            reservations.held(s, task_id, now),
        )
        model = current_labels(s, task_id, source="model")
        rows = s.execute(
            select(Item.id, Item.external_id, Item.data, Item.content_hash).where(
                Item.task_id == task_id, Item.status != "failed"
            )
        ).all()
        readable = {r.id: r for r in rows}
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
    lottery = sorted(readable, key=lambda i: _stable_order(spec.salt, i))
    mine = [i for i in holdings.mine() if i in readable]
    started = [i for i in holdings.started(lottery) if i not in mine]
    ahead = [*mine, *started]
    taken = set(ahead)
    open_items = [
        i for i in lottery if i not in holdings.people and i not in taken and holdings.free(i)
    ]
    picked = Query([])
    need = limit - len(ahead)
    if need > 0:
        pool = Pool(
            open=open_items,
            uncovered=[i for i in open_items if i not in model],
            priority=priority,
            human_labels=len(holdings.people),
            served=spec.served_version is not None,
            certified=certified,
            vectors=lambda ids: _vectors(rt, spec, [readable[i] for i in ids]),
        )
        picked = strategy_for(spec.policy).query(pool, need)
    audits = set(picked.audits) | (set(picked.rest) if picked.rest_are_audits else set())
    candidates = [*ahead, *picked.items, *picked.rest]
    reserved_until = None
    with rt.session() as s:
        if annotator is None:
            chosen = candidates[:limit]
        else:
            lease = timedelta(seconds=rt.settings.reservation_lease_s)
            reserved_until = now + lease
            if lock_task(s, task_id) is None:
                raise NotFound(f"no task {task_id}")
            chosen = reservations.claim(
                s, task_id, holdings, revision, candidates, limit, now, reserved_until
            )
        record_audit_picks(s, task_id, [i for i in chosen if i in audits])
        blind = reservations.audits_among(s, chosen)
    preds = current_predictions(rt, spec, chosen) if spec.served_version is not None else {}
    return {
        "model_version": spec.served_version,
        "annotator": annotator,
        "reserved_until": None if reserved_until is None else reserved_until.isoformat(),
        "lease_seconds": rt.settings.reservation_lease_s,
        "items": [
            {
                "id": i,
                "external_id": readable[i].external_id,
                "data": readable[i].data,
                "audit": i in blind,
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
