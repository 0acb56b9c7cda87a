"""Pre-labels: loading a served version, scoring items, storing scores for ordering."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.errors import LabelloopError, NoModel, NotFound
from labelloop.fetch import Content
from labelloop.jobs.base import DataPrediction, ItemPredictions
from labelloop.jobs.state import JobState, claim, fail_by_id, finish, is_finished
from labelloop.learners import Features, Learner, learner_by_name
from labelloop.loop import rescoring
from labelloop.loop.cache import folder_bytes
from labelloop.loop.features import ItemRef, featurize, featurize_contents, read_content
from labelloop.loop.labels import human_labels
from labelloop.loop.selection import strategy_for
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Item, Job, ModelVersion, Task, utcnow
from labelloop.store.upsert import upsert_predictions


def load_model(rt: Runtime, task_id: int, version: int) -> Learner:
    """The learner of ``model-time<version>`` of a task, from this process's cache."""

    def load() -> tuple[Learner, int]:
        folder = rt.folder(task_id).version_dir(version) / "model"
        if not folder.is_dir():
            raise NotFound(f"task {task_id} has no model version {version} on disk")
        meta = json.loads((folder / "learner.json").read_text())
        learner = learner_by_name(meta["learner"]).load(folder)
        return learner, max(folder_bytes(folder) * 3, 1)

    return rt.models.get(task_id, version, load)


@dataclass
class Scored:
    version: int
    scores: np.ndarray
    ok: list[int]
    failed: dict[int, str]


def score_items(rt: Runtime, spec: TaskSpec, version: int, refs: Sequence[ItemRef]) -> Scored:
    model = load_model(rt, spec.id, version)
    batch = featurize(rt, spec.id, spec.category, model, refs)
    scores = model.predict_proba(batch.features) if batch.ok else np.zeros((0, len(spec.labels)))
    return Scored(version, scores, batch.ok, batch.failed)


def score_contents(
    rt: Runtime, spec: TaskSpec, version: int, contents: Sequence[Content]
) -> np.ndarray:
    model = load_model(rt, spec.id, version)
    return model.predict_proba(featurize_contents(model, contents))


def prediction_rows(
    spec: TaskSpec,
    version: int,
    item_ids: Sequence[int],
    scores: np.ndarray,
    weights: dict[int, float] | None = None,
) -> list[dict[str, object]]:
    """Rows of the predictions table; ``uncertainty`` is the priority ``/next`` ranks by (the
    task's query strategy's, with the per-item weights the version was trained with)."""
    chosen = spec.kind.decide(scores, spec.labels)
    conf = spec.kind.confidence(scores)
    stored = spec.kind.stored_scores(scores)
    w = None
    if weights:
        # An item outside the sample the version was trained on has no weight of its own: it
        # gets the sample's median (density weighting beyond the sample is approximate).
        missing = float(np.median(np.fromiter(weights.values(), dtype=np.float64)))
        w = np.array([weights.get(int(i), missing) for i in item_ids])
    unc = strategy_for(spec.policy).priority(spec.kind.ranked_scores(scores), spec.multi_label, w)
    now = utcnow()
    return [
        {
            "item_id": int(item_id),
            "task_id": spec.id,
            "version": version,
            "labels": chosen[i],
            "scores": stored[i],
            "score": float(conf[i]),
            "uncertainty": float(unc[i]),
            "created_at": now,
        }
        for i, item_id in enumerate(item_ids)
    ]


WEIGHTS_FILE = "weights.npz"


def selection_weights(rt: Runtime, task_id: int, version: int) -> dict[int, float]:
    """The per-item weights a version was trained with (``weights.npz``: the query strategy's
    :meth:`~labelloop.loop.selection.QueryStrategy.pool_weights`; none for text)."""
    path = rt.folder(task_id).version_dir(version) / WEIGHTS_FILE
    try:
        with np.load(path) as w:
            return dict(zip(w["item_ids"].tolist(), w["weights"].tolist(), strict=True))
    except (FileNotFoundError, OSError, KeyError, ValueError):
        return {}


def store_predictions(rt: Runtime, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    with rt.session() as s:
        upsert_predictions(s, rows)


def run_predict_job(rt: Runtime, job_id: int) -> list[int]:
    """Re-predict a batch of unlabelled items with a newly promoted version (idempotent: a rerun
    scores the ids the job carries and writes the same rows).

    On a task with auto-labelling it also re-derives the model labels of its own items from the
    version's threshold, in the transaction that stores their pre-labels: a large pool's model
    labels follow its re-prediction chunk by chunk, and no job holds more than a chunk. A chunk
    of a rescoring (``payload["plan"]``) marks its items rescored and queues the plan's next
    chunk in that transaction too (:mod:`labelloop.loop.rescoring`): returns its id."""
    with rt.session() as s:
        claimed = _claim_served(s, job_id, _finish_batch)
        work = None if claimed is None else _chunk_of(s, *claimed)
    if claimed is None:
        return _after_failed_claim(rt, job_id)
    if work is None:
        return []
    spec, version, chunk, plan, refs, threshold = work
    auto = spec.auto_label is not None
    scored = score_items(rt, spec, version, refs)
    weights = selection_weights(rt, spec.id, version)
    ok_ids = [refs[i].id for i in scored.ok]
    rows = prediction_rows(spec, version, ok_ids, scored.scores, weights)
    following = None if plan is None else _pick_next(rt, spec.id, version, plan, chunk)
    with rt.session() as s:
        task = s.get(Task, spec.id)
        job = s.get(Job, job_id)
        if task is None or job is None:
            return []
        if task.served_version != version or (
            plan is not None and not rescoring.current(task, version, plan)
        ):
            _finish_batch(job, {"skipped": "superseded"})
            return []
        upsert_predictions(s, rows)
        result: dict[str, object] = {"predicted": len(rows), "failed": len(scored.failed)}
        if auto:
            # Imported here: scipy (the threshold's bound) stays out of processes that only
            # re-predict tasks without auto-labelling.
            from labelloop.loop.autolabel import apply_model_labels

            applied = apply_model_labels(
                s, spec, version, ok_ids, scored.scores, threshold, within=chunk
            )
            result |= {
                "model_labelled": applied.labelled,
                "changed": applied.changed,
                "retracted": applied.retracted,
            }
        if plan is None or following is None:
            _finish_batch(job, result)
            return []
        rescoring.mark_rescored(s, chunk, plan.promotion)
        ids, after, seconds = following
        nxt = rescoring.queue_chunk(s, task, version, ids, after)
        _finish_batch(job, result | {"phase": plan.phase, "pick_s": seconds})
        return [] if nxt is None else [nxt.id]


def _chunk_of(
    s: Session, job: Job, task: Task, version: int
) -> tuple[TaskSpec, int, list[int], rescoring.Plan | None, list[ItemRef], float | None] | None:
    """What a claimed chunk job scores (None: its rescoring's promotion is over, it skipped)."""
    plan = rescoring.Plan.of(job.payload)
    if plan is not None and not rescoring.current(task, version, plan):
        _finish_batch(job, {"skipped": "superseded"})
        return None
    spec = TaskSpec.of(task)
    chunk = [int(i) for i in job.payload["item_ids"]]
    refs = [
        ItemRef(i.id, i.data, i.content_hash)
        for i in s.scalars(select(Item).where(Item.id.in_(chunk)))
    ]
    auto = spec.auto_label is not None
    threshold = _auto_label_threshold(s, spec.id, version) if auto else None
    return spec, version, chunk, plan, refs, threshold


def _pick_next(
    rt: Runtime, task_id: int, version: int, plan: rescoring.Plan, chunk: Sequence[int]
) -> tuple[list[int], rescoring.Plan, float]:
    """The plan's next chunk, read in a reading transaction (nobody waits for the store's write
    lock meanwhile), and how long the pick took."""
    started = time.perf_counter()
    with rt.reading() as s:
        task = s.get_one(Task, task_id)
        labelled = human_labels(s, task).labels
        ids, after = rescoring.pick(
            s, task_id, version, plan, rt.settings.rescore_chunk, labelled, chunk
        )
    return ids, after, round(time.perf_counter() - started, 3)


def _after_failed_claim(rt: Runtime, job_id: int) -> list[int]:
    """A rescoring chunk that was not run (it used up its attempts: its workers died each time)
    still hands the plan on: the rest of the pool is not left for the next promotion."""
    with rt.reading() as s:
        job = s.get(Job, job_id)
        if job is None or job.state != JobState.FAILED:
            return []
        plan = rescoring.Plan.of(job.payload)
        task_id, version = job.task_id, int(job.payload["version"])
        chunk = [int(i) for i in job.payload.get("item_ids", ())]
    return [] if plan is None else continue_plan(rt, task_id, version, plan, chunk)


def continue_plan(
    rt: Runtime, task_id: int, version: int, plan: rescoring.Plan, chunk: Sequence[int]
) -> list[int]:
    """Queue the chunk after ``chunk`` (which ended without scoring) if the plan is current."""
    ids, after, _ = _pick_next(rt, task_id, version, plan, chunk)
    with rt.session() as s:
        task = s.get(Task, task_id)
        if task is None or not rescoring.current(task, version, plan):
            return []
        nxt = rescoring.queue_chunk(s, task, version, ids, after)
        return [] if nxt is None else [nxt.id]


def fail_predict_job(rt: Runtime, job_id: int, reason: str) -> list[int]:
    """A chunk that raised: failed with its reason; a rescoring's plan goes on after it."""
    with rt.session() as s:
        job = fail_by_id(s, job_id, reason)
        if job is None:
            return []
        plan = rescoring.Plan.of(job.payload)
        task_id, version = job.task_id, int(job.payload["version"])
        chunk = [int(i) for i in job.payload.get("item_ids", ())]
        job.payload = {k: v for k, v in job.payload.items() if k != "item_ids"} | {
            "items": len(chunk)
        }
    return [] if plan is None else continue_plan(rt, task_id, version, plan, chunk)


def _auto_label_threshold(s: Session, task_id: int, version: int) -> float | None:
    """The confidence above which ``version`` labels items itself (None: it certified none)."""
    metrics = s.scalar(
        select(ModelVersion.metrics).where(
            ModelVersion.task_id == task_id, ModelVersion.version == version
        )
    )
    threshold = ((metrics or {}).get("auto_label") or {}).get("threshold")
    return None if threshold is None else float(threshold)


def _claim_served(
    s: Session, job_id: int, end: Callable[[Job, dict[str, object]], object]
) -> tuple[Job, Task, int] | None:
    """Claim a job that works for one version, or None when there is nothing to do: it is gone,
    finished, out of attempts, or a newer promotion (or a rollback) superseded its version (then
    ``end`` finishes it as skipped; that version's successor queued its own jobs)."""
    job = s.get(Job, job_id)
    if job is None or is_finished(job):
        return None
    task = s.get(Task, job.task_id)
    if task is None:
        return None
    version = int(job.payload["version"])
    if task.served_version != version:
        end(job, {"skipped": "superseded"})
        return None
    if not claim(job):
        return None
    return job, task, version


def _finish_batch(job: Job, result: dict[str, object]) -> None:
    """Done, and its item ids dropped from the store (a finished job never runs again): a large
    task's promotions do not pile up a copy of the pool's ids each in the jobs table."""
    if finish(job, result):
        job.payload = {k: v for k, v in job.payload.items() if k != "item_ids"} | {
            "items": len(job.payload.get("item_ids", ()))
        }


def run_rescore_job(rt: Runtime, job_id: int) -> list[int]:
    """After a promotion, in the background: start the rescoring of the pool (its first chunk
    job; each chunk queues the next: :mod:`labelloop.loop.rescoring`). Every unlabelled item,
    the version's own scores included, when the payload says ``all``: after a promotion by
    hand, and after a training that read a sample of a task with auto-labelling (a chunk
    re-derives its items' model labels, and an item this version scored on demand has had none
    derived)."""
    return plan_rescore(rt, job_id, everything=False)


def plan_rescore(rt: Runtime, job_id: int, everything: bool) -> list[int]:
    """:func:`run_rescore_job`, over every unlabelled item when ``everything``.

    Three transactions: the claim; the pick of the first chunk in a reading transaction (a
    chunk of rows, whatever the pool); the chunk job created with the job's end, so a rerun
    after a crash finds either nothing done or the job finished."""
    with rt.session() as s:
        claimed = _claim_served(s, job_id, finish)
        if claimed is None:
            return []
        claimed_job, served, version = claimed
        task_id = served.id
        plan = rescoring.Plan(
            planner=job_id,
            promotion=served.promotions,
            everything=everything or bool(claimed_job.payload.get("all")),
            head_left=rt.settings.rescore_head,
        )
    ids, first, seconds = _pick_next(rt, task_id, version, plan, ())
    with rt.session() as s:
        job = s.get(Job, job_id)
        task = s.get(Task, task_id)
        if job is None or task is None or is_finished(job):
            return []
        if not rescoring.current(task, version, plan):
            finish(job, {"skipped": "superseded"})
            return []
        chunk = rescoring.queue_chunk(s, task, version, ids, first)
        finish(job, {"first_chunk": len(ids), "pick_s": seconds})
        return [] if chunk is None else [chunk.id]


def require_served(spec: TaskSpec) -> int:
    if spec.served_version is None:
        raise NoModel(f"task {spec.id} has no model yet")
    return spec.served_version


def predict_data(
    rt: Runtime, spec: TaskSpec, version: int, data: Sequence[str]
) -> list[DataPrediction]:
    """Scores for data links or texts; a link that fails gets its reason, the others go on."""
    out: list[DataPrediction] = [DataPrediction() for _ in data]
    contents: list[Content] = []
    where: list[int] = []
    for i, d in enumerate(data):
        try:
            contents.append(read_content(rt, spec.category, d, spec.id))
            where.append(i)
        except LabelloopError as exc:
            out[i].error = exc.message
    if not contents:
        return out
    model = load_model(rt, spec.id, version)
    try:
        feats = featurize_contents(model, contents)
        good = where
    except LabelloopError:
        # One bad item in the batch: featurize one by one so the others still get answers.
        parts, good = [], []
        for i, c in zip(where, contents, strict=True):
            try:
                parts.append(featurize_contents(model, [c]))
                good.append(i)
            except LabelloopError as exc:
                out[i].error = exc.message
        if not good:
            return out
        feats = Features.concat(parts)
    scores = model.predict_proba(feats)
    chosen = spec.kind.decide(scores, spec.labels)
    conf = spec.kind.confidence(scores)
    stored = spec.kind.stored_scores(scores)
    unc = strategy_for(spec.policy).priority(
        spec.kind.ranked_scores(scores), spec.multi_label, None
    )
    for k, i in enumerate(good):
        out[i] = DataPrediction(
            labels=chosen[k], scores=stored[k], score=float(conf[k]), uncertainty=float(unc[k])
        )
    return out


def predict_stored(
    rt: Runtime, spec: TaskSpec, version: int, item_ids: Sequence[int]
) -> ItemPredictions:
    """Prediction rows (as :func:`prediction_rows` makes them) for stored items."""
    with rt.reading() as s:
        items = {
            i.id: i
            for i in s.scalars(
                select(Item).where(Item.id.in_(list(item_ids)), Item.task_id == spec.id)
            )
        }
    refs = [
        ItemRef(items[i].id, items[i].data, items[i].content_hash) for i in item_ids if i in items
    ]
    scored = score_items(rt, spec, version, refs)
    weights = selection_weights(rt, spec.id, version)
    rows = prediction_rows(spec, version, [refs[i].id for i in scored.ok], scored.scores, weights)
    return ItemPredictions(version, rows, scored.failed)
