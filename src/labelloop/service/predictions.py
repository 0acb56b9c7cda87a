"""Pre-labels: for one stored item, for data not stored, and for the next items to label."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from labelloop.errors import Conflict, InvalidInput, NotFound
from labelloop.loop import ranking
from labelloop.loop.prediction import store_predictions
from labelloop.loop.selection import DEPTH, Pool, Query, strategy_for
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.service import reservations
from labelloop.service.common import get_task_row, task_spec
from labelloop.store.models import Item, ModelVersion, Prediction, utcnow

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
    with rt.reading() as s:
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
    with rt.reading() as s:
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


def next_items(
    rt: Runtime, task_id: int, limit: int, annotator: str | None = None
) -> dict[str, Any]:
    """Items to label next, most useful first, each with its pre-label.

    The task's query strategy (:func:`labelloop.loop.selection.strategy_for`) chooses among the
    items no person or model has labelled (audits: among every item without a human label), from
    the ranking kept in the store (:mod:`labelloop.loop.ranking`), read with ``LIMIT``: what a call
    reads grows with the labels and the reservations, never with the pool. Picked audits are
    recorded. Items other annotators hold are left out. With ``annotator``, what is handed out is
    reserved for them for a lease, and the items they hold already come first
    (:mod:`labelloop.service.reservations`); with an overlap above 1, items that some but too few
    people labelled come next. Nothing is featurized and no feature is read here: near-copies are
    told apart by the signatures stored with the items.
    """
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    now = utcnow()
    with rt.reading() as s:  # the choice is made from a snapshot, beside any writer
        task = get_task_row(s, task_id)
        if task.archived_at is not None:
            raise Conflict(f"task {task_id} is archived: restore it to label its items")
        spec = TaskSpec.of(task)
        people, revision = reservations.labellers_now(s, task)
        holdings = reservations.Holdings(
            spec.policy.overlap, annotator, people, reservations.held(s, task_id, now)
        )
        held = holdings.mine()
        started: list[int] = []
        if spec.policy.overlap > 1:
            some = [i for i, who in people.items() if 0 < len(who) < spec.policy.overlap]
            started = holdings.started(ranking.lottery_order(s, some))
        readable = _readable(s, task_id, [*held, *started])
        ahead = [i for i in dict.fromkeys([*held, *started]) if i in readable]
        skip = set(people) | set(ahead)
        skip |= {i for i in holdings.holders if not holdings.free(i)}
        need = limit - len(ahead)
        pool = _pool(s, spec, need * DEPTH, skip, len(people)) if need > 0 else None
    picked = Query([]) if pool is None else strategy_for(spec.policy).query(pool, need)
    audits = set(picked.audits) | (set(picked.rest) if picked.rest_are_audits else set())
    candidates = [*ahead, *picked.items, *picked.rest]
    reserved_until = None
    if annotator is not None:
        reserved_until = now + timedelta(seconds=rt.settings.reservation_lease_s)
    chosen = reservations.hand_out(
        rt, task_id, holdings, revision, candidates, limit, now, reserved_until or now, audits
    )
    with rt.reading() as s:  # what the items hold, read after the claim's write lock
        blind = reservations.audits_among(s, chosen)
        rows = _readable(s, task_id, chosen)
    preds = freshest_predictions(rt, spec, chosen)
    return {
        "model_version": spec.served_version,
        "annotator": annotator,
        "reserved_until": None if reserved_until is None else reserved_until.isoformat(),
        "lease_seconds": rt.settings.reservation_lease_s,
        "items": [
            {
                "id": i,
                "external_id": rows[i].external_id,
                "data": rows[i].data,
                "audit": i in blind,
                "prediction": preds.get(i, no_model(i)),
            }
            for i in chosen
        ],
    }


def _pool(s: Any, spec: TaskSpec, depth: int, skip: set[int], human_labels: int) -> Pool:
    """What the query strategy chooses from: windows of the stored ranking, ``depth`` deep, with
    the near-copy signatures stored on their items (no features are read in a request). A window
    the task's strategy never reads is not read: the stored priorities once a model serves, the
    draw of audits only with auto-labelling."""
    served = spec.served_version is not None
    ranks = served and spec.policy.selection != "random"
    audits = spec.policy.auto_label is not None
    signed: dict[int, bytes | None] = {}
    uncovered: list[int] = []
    if not ranks or audits:
        got = ranking.signed_window(s, spec.id, depth, uncovered=True, skip=skip)
        signed.update(got)
        uncovered = list(got)
    ranked = None
    if ranks:
        got = ranking.signed_window(s, spec.id, depth, order="rank", uncovered=True, skip=skip)
        signed.update(got)
        ranked = list(got)
    return Pool(
        open=ranking.window(s, spec.id, depth, skip=skip) if audits and served else [],
        uncovered=uncovered,
        ranked=ranked,
        human_labels=human_labels,
        served=served,
        certified=served and audits and _threshold(s, spec) is not None,
        signatures=signed,
    )


def _readable(session: Any, task_id: int, item_ids: Sequence[int]) -> dict[int, Any]:
    """Item id -> (id, external_id, data, content_hash, status) of the readable ones among a
    handful of items."""
    if not item_ids:
        return {}
    rows = session.execute(
        select(Item.id, Item.external_id, Item.data, Item.content_hash, Item.status).where(
            Item.task_id == task_id, Item.id.in_(list(item_ids)), Item.status != "failed"
        )
    ).all()
    return {r.id: r for r in rows}


def freshest_predictions(
    rt: Runtime, spec: TaskSpec, item_ids: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """Pre-labels for ``/next``: each item's freshest stored prediction, whatever version made it
    (its ``model_version`` says which: background rescoring reaches every item in time). Only an
    item with none stored and its features ready is scored here, by the served version; one
    still waiting for its features has no pre-label yet (nothing is featurized in a request)."""
    version = spec.served_version
    if version is None or not item_ids:
        return {}
    with rt.reading() as s:
        stored = {
            p.item_id: p
            for p in s.scalars(select(Prediction).where(Prediction.item_id.in_(list(item_ids))))
        }
        missing = [i for i in item_ids if i not in stored]
        ready = set(
            s.scalars(select(Item.id).where(Item.id.in_(missing), Item.status == "ready"))
            if missing
            else []
        )
    out = {i: _as_answer(spec, p) for i, p in stored.items()}
    todo = [i for i in missing if i in ready]
    if todo:
        out.update(current_predictions(rt, spec, todo))
    return out


def _threshold(session: Any, spec: TaskSpec) -> float | None:
    metrics = session.scalar(
        select(ModelVersion.metrics).where(
            ModelVersion.task_id == spec.id, ModelVersion.version == spec.served_version
        )
    )
    value = ((metrics or {}).get("auto_label") or {}).get("threshold")
    return None if value is None else float(value)
