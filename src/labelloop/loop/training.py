"""The training job: snapshot labels at a revision, fit, score, write the version, maybe promote.

It is idempotent and safe to run twice (a redelivered message, a restarted worker): the version
number belongs to the job's key, the folder is written whole or not at all, and promotion is a
compare-and-set on the task's served version, so a job promotes at most once.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update

from labelloop.distributed.launch import world_config
from labelloop.errors import LabelloopError, Unavailable
from labelloop.jobs.state import claim, fail, finish, is_finished
from labelloop.learners import Features, Learner, learner_by_name, neighbours
from labelloop.learners.auto import AutoImage
from labelloop.learners.base import Featurizer
from labelloop.learners.choice import choose
from labelloop.learners.finetune import FineTune
from labelloop.loop import autolabel, evaluation, retention
from labelloop.loop.features import ItemRef, featurize
from labelloop.loop.labels import labelled_at
from labelloop.loop.policy import AutoLabelPolicy
from labelloop.loop.prediction import WEIGHTS_FILE, load_model, prediction_rows
from labelloop.loop.scheduling import after_training, rescore_job
from labelloop.loop.selection import strategy_for
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import AuditPick, Item, Job, ModelVersion, Task, utcnow
from labelloop.store.upsert import upsert_predictions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    spec: TaskSpec
    version: int
    revision: int
    labels: dict[int, list[str]]
    #: Item id -> revision of its current label (to find labels newer than the served model).
    label_revisions: dict[int, int]
    #: Revision the served model was trained at (None: nothing serves yet).
    served_revision: int | None
    #: The labelled items and the pool's sample (:func:`read_pool`), in id order.
    items: list[ItemRef]
    #: Labelled items that ``/next`` handed out as random audits (held-out evidence).
    audits: frozenset[int] = frozenset()
    #: Readable items of the task, and whether ``items`` leaves some of them out (a sample).
    n_pool: int = 0
    sampled: bool = False


def read_pool(
    s: Any, task_id: int, labelled: Collection[int], sample: int
) -> tuple[list[ItemRef], int, bool]:
    """What a training reads of the task's items: every labelled one (pending ones are featurized
    by the training) and at most ``sample`` unlabelled ready ones, the first of the task's stable
    random order (``Item.lottery``, a hash keyed by the task's salt: a rerun reads the same
    items, and a new item joins only where it falls in that order). One ``LIMIT`` read through
    the lottery index: memory and time grow with the labels and the sample, not the pool.
    Returns the items in id order, the number of readable items of the task, and whether the
    sample left ready items out."""
    cols = (Item.id, Item.data, Item.content_hash)
    out: dict[int, ItemRef] = {}
    wanted = sorted(labelled)
    for start in range(0, len(wanted), 10_000):  # (SQLite limits a statement's parameters)
        for r in s.execute(
            select(*cols).where(
                Item.id.in_(wanted[start : start + 10_000]),
                Item.task_id == task_id,
                Item.status != "failed",
            )
        ):
            out[r.id] = ItemRef(r.id, r.data, r.content_hash)
    unlabelled = 0
    sampled = False
    for r in s.execute(
        select(*cols)
        .where(Item.task_id == task_id, Item.status == "ready")
        .order_by(Item.lottery)
        .limit(sample + len(out) + 1)  # labelled ones are skipped: still ``sample`` left
    ):
        if r.id in out:
            continue
        if unlabelled == sample:
            sampled = True  # more ready items than the sample holds
            break
        out[r.id] = ItemRef(r.id, r.data, r.content_hash)
        unlabelled += 1
    n_pool = s.scalar(
        select(func.count())
        .select_from(Item)
        .where(Item.task_id == task_id, Item.status != "failed")
    )
    return [out[i] for i in sorted(out)], int(n_pool or 0), sampled


def _claim(rt: Runtime, job_id: int) -> Claim | list[int]:
    """Mark the job running and read what it needs; a list means "nothing to do, enqueue these"."""
    with rt.session() as s:
        job = s.get(Job, job_id)
        if job is None or is_finished(job):
            return []
        task = s.get(Task, job.task_id)
        if task is None:
            return []
        if not claim(job):  # out of attempts: failed with the reason
            return [j.id for j in after_training(s, task)]
        revision = int(job.payload["revision"])
        at = labelled_at(s, task.id, revision)
        labels = {i: ls for i, (ls, _) in at.items()}
        served_revision = None
        if task.served_version is not None:
            served_revision = s.scalar(
                select(ModelVersion.label_revision).where(
                    ModelVersion.task_id == task.id, ModelVersion.version == task.served_version
                )
            )
        mv = s.scalar(select(ModelVersion).where(ModelVersion.job_key == job.key))
        if mv is None:
            newest = s.scalar(
                select(func.max(ModelVersion.version)).where(ModelVersion.task_id == task.id)
            )
            spec = TaskSpec.of(task)
            mv = ModelVersion(
                task_id=task.id,
                version=0 if newest is None else newest + 1,
                job_key=job.key,
                learner=spec.new_learner().name,
                label_revision=revision,
                n_labels=len(labels),
                metrics={},
            )
            s.add(mv)
            s.flush()
        # The pool: labelled items (pending ones are featurized here) and a bounded sample of
        # the featurized ones. Items still waiting for their featurize job join it later.
        sample = rt.settings.train_pool_sample
        items, n_pool, sampled = read_pool(s, task.id, labels, sample)
        audits = frozenset(
            s.scalars(select(AuditPick.item_id).where(AuditPick.task_id == task.id)).all()
        )
        return Claim(
            TaskSpec.of(task),
            mv.version,
            revision,
            labels,
            {i: rev for i, (_, rev) in at.items()},
            served_revision,
            items,
            audits & frozenset(labels),
            n_pool,
            sampled,
        )


def _fail(rt: Runtime, job_id: int, reason: str) -> list[int]:
    with rt.session() as s:
        job_task = s.scalar(select(Job.task_id).where(Job.id == job_id))
    if job_task is not None:
        _remove_checkpoints(rt, job_task, job_id)
    with rt.session() as s:
        job = s.get(Job, job_id)
        if job is None or not fail(job, reason):
            return []
        mv = s.scalar(select(ModelVersion).where(ModelVersion.job_key == job.key))
        if mv is not None and mv.status == "building":
            mv.status = "failed"
            mv.metrics = {"error": reason}
        task = s.get(Task, job.task_id)
        return [] if task is None else [j.id for j in after_training(s, task)]


def _warm_start(rt: Runtime, spec: TaskSpec, learner: Learner) -> Learner | None:
    if not learner.supports_warm_start or spec.served_version is None:
        return None
    try:
        served = load_model(rt, spec.id, spec.served_version)
    except LabelloopError:
        return None
    return served if type(served) is type(learner) else None


def run_train_job(rt: Runtime, job_id: int) -> list[int]:
    """Run one training job; returns the ids of the jobs to enqueue next."""
    claim = _claim(rt, job_id)
    if isinstance(claim, list):
        return claim
    spec = claim.spec
    try:
        follow = _train(rt, job_id, claim)
    except Unavailable:
        raise  # the store is away: the job runs again (see loop.executor), it has not failed
    except LabelloopError as exc:
        log.warning("training job %s of task %s failed: %s", job_id, spec.id, exc.message)
        return _fail(rt, job_id, exc.message)
    except Exception as exc:  # a learner bug must not loop forever; the reason is kept
        log.exception("training job %s of task %s crashed", job_id, spec.id)
        return _fail(rt, job_id, f"training crashed: {type(exc).__name__}: {exc}")
    try:
        retention.prune_versions(rt, spec.id)
    except LabelloopError as exc:  # the next training prunes again
        log.warning("task %s: pruning old versions failed: %s", spec.id, exc.message)
    return follow


class Phases:
    """Seconds spent in each step of a run, for the version's metrics."""

    def __init__(self) -> None:
        self.started = self.mark = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.mark, 4)
        self.mark = now

    def total(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class Prepared:
    """The job's data: features of the pool, and the labelled part of it."""

    ok_ids: list[int]
    labelled_ids: list[int]
    X: Features
    Y: np.ndarray
    pool: Features


@dataclass
class Fitted:
    """The learner the run keeps (fitted on every label), its out-of-sample scores, and why."""

    model: Learner
    oos: np.ndarray
    #: Candidate name -> its cross-validated evidence; the reason the model's learner won.
    candidates: dict[str, Any]
    reason: str
    resumed: bool


@dataclass
class RunResult:
    """What a run hands to :func:`_finish`: the version written and what promotion needs."""

    metrics: dict[str, Any]
    decision: evaluation.Decision
    train_seconds: float
    learner: str
    #: Every item of the pool that has features, and the unlabelled ones among them.
    pool_ids: list[int]
    unlabelled_ids: list[int]
    pool_scores: np.ndarray | None
    weights: dict[int, float] = field(default_factory=dict)


def _train(rt: Runtime, job_id: int, claim: Claim) -> list[int]:
    """The steps of a run: prepare, fit (or resume), evaluate, write the version, finish."""
    phases = Phases()
    learner = claim.spec.new_learner()
    previous = _previous_choice(rt, claim)
    candidates = _candidates(learner, len(claim.labels), previous)
    prepared = _prepare(rt, claim, candidates, _on_pool(learner, previous))
    phases("featurize")
    if prepared is None:
        return _fail(rt, job_id, "fewer than two usable labelled items of different classes")
    # The pool's neighbour index (density weights, label spreading) is the task's, in its data
    # folder: built by the first training that needs it, grown by the next ones, in any worker.
    with neighbours.kept_in(rt.folder(claim.spec.id).preprocess / "neighbours"):
        fitted = _fit(rt, job_id, claim, candidates, prepared, phases)
        result = _evaluate(rt, claim, prepared, fitted, phases)
    result.metrics["costly_evaluated_at"] = _costly_evaluated_at(candidates, prepared, previous)
    _write_version(rt, claim, prepared, fitted, result, phases)
    follow = _finish(rt, job_id, claim, result)
    _stream_prelabels(rt, claim, result)
    _remove_checkpoints(rt, claim.spec.id, job_id)
    return follow


@dataclass(frozen=True)
class PreviousChoice:
    """What the task's newest version says about the choice of learner."""

    learner: str | None = None
    #: Labels at the last training that evaluated a costly candidate (fine-tuning).
    costly_evaluated_at: int | None = None


def _previous_choice(rt: Runtime, claim: Claim) -> PreviousChoice:
    with rt.session() as s:
        row = s.execute(
            select(ModelVersion.learner, ModelVersion.metrics)
            .where(ModelVersion.task_id == claim.spec.id, ModelVersion.status == "ready")
            .order_by(ModelVersion.version.desc())
            .limit(1)
        ).first()
    if row is None:
        return PreviousChoice()
    at = (row.metrics or {}).get("costly_evaluated_at")
    return PreviousChoice(row.learner, None if at is None else int(at))


def _candidates(learner: Learner, n_labels: int, previous: PreviousChoice) -> list[Learner]:
    """The learners this run chooses among: ``auto`` lists them, any other learner is alone.

    A costly candidate (fine-tuning) competes when it serves now, or when the labels have doubled
    since it last competed: a handful of evaluations over a task's life instead of one per
    training.
    """
    if not isinstance(learner, AutoImage):
        return [learner]
    out = learner.candidate_learners(n_labels)
    at = previous.costly_evaluated_at
    return [
        c
        for c in out
        if not getattr(c, "holdout_only", False)
        or at is None
        or c.name == previous.learner
        or n_labels >= 2 * at
    ]


def _costly_evaluated_at(
    candidates: list[Learner], prepared: Prepared, previous: PreviousChoice
) -> int | None:
    if any(getattr(c, "holdout_only", False) for c in candidates):
        return len(prepared.labelled_ids)
    return previous.costly_evaluated_at


def _on_pool(learner: Learner, previous: PreviousChoice) -> frozenset[str] | None:
    """Versions of the featurizers the pool has (or gets) for every item; None: all of them."""
    if not isinstance(learner, AutoImage):
        return None
    return frozenset(f.version for f in learner.pool_featurizers(previous.learner))


def _prepare(
    rt: Runtime, claim: Claim, candidates: list[Learner], on_pool: frozenset[str] | None = None
) -> Prepared | None:
    """Featurize the pool for every candidate (cached); None if the labels cannot train a model.

    A costly candidate (fine-tuning), and one whose views the pool does not have (``on_pool``:
    the backbone's learners before one of them won), is featurized for the labelled items only:
    choosing needs no more, and the pool's features are computed only if it wins
    (:func:`_pool_for`).
    """
    spec = claim.spec
    costly = [
        c
        for c in candidates
        if getattr(c, "holdout_only", False)
        or (on_pool is not None and any(f.version not in on_pool for f in c.featurizers()))
    ]
    cheap = [c for c in candidates if c not in costly] or costly
    batch = featurize(rt, spec.id, spec.category, _featurizers(cheap), claim.items)
    _record_items(rt, batch.hashes, batch.failed)
    ok_ids = [claim.items[i].id for i in batch.ok]
    labelled_pos = [p for p, item_id in enumerate(ok_ids) if item_id in claim.labels]
    labelled_ids = [ok_ids[p] for p in labelled_pos]
    values = [claim.labels[i] for i in labelled_ids]
    Y = spec.kind.encode(values, spec.labels)
    used = {label for value in values for label in spec.kind.classes(value)}
    if len(labelled_ids) < 2 or (not spec.multi_label and len(used) < spec.kind.min_classes):
        return None
    X = batch.features.take(labelled_pos)
    refs = {it.id: it for it in claim.items}
    for cand in costly:
        if cand in cheap:
            continue
        extra = featurize(rt, spec.id, spec.category, cand, [refs[i] for i in labelled_ids])
        if len(extra.ok) == len(labelled_ids):
            X.views.update(extra.features.views)
        else:  # it cannot read every labelled item: it is no candidate this time
            candidates.remove(cand)
    return Prepared(ok_ids, labelled_ids, X, Y, batch.features)


def _featurizers(learners: list[Learner]) -> list[Featurizer]:
    out: dict[str, Featurizer] = {}
    for learner in learners:
        for fz in learner.featurizers():
            out.setdefault(fz.version, fz)
    return list(out.values())


def _pool_for(rt: Runtime, claim: Claim, prepared: Prepared, model: Learner) -> Features:
    """The pool's features for the chosen model: already there, or computed now (fine-tuning won)."""
    views = model.views()
    if all(v in prepared.pool.views for v in views):
        return prepared.pool.only(views)
    refs = {it.id: it for it in claim.items}
    batch = featurize(
        rt, claim.spec.id, claim.spec.category, model, [refs[i] for i in prepared.ok_ids]
    )
    if len(batch.ok) != len(prepared.ok_ids):
        raise LabelloopError("the chosen learner cannot read every item of the pool")
    prepared.pool.views.update(batch.features.views)
    return prepared.pool.only(views)


def _fit(
    rt: Runtime,
    job_id: int,
    claim: Claim,
    candidates: list[Learner],
    prepared: Prepared,
    phases: Phases,
) -> Fitted:
    """Choose the learner by cross-validation and fit it on every label; or resume what an
    earlier attempt of this job fitted (``Snapshot/job-<id>.ckpt``)."""
    spec = claim.spec
    folder = rt.folder(spec.id)
    checkpoint = f"job-{job_id}"
    resumed = _resume(folder.checkpoint_dir(checkpoint), prepared.labelled_ids)
    if resumed is not None:
        phases("resume")
        return resumed
    epochs_dir = folder.checkpoint_dir(f"{checkpoint}-epochs")
    for cand in candidates:
        if isinstance(cand, FineTune):
            cand.set_snapshot_dir(
                epochs_dir,
                keep=rt.settings.train_keep_checkpoints,
                every_steps=rt.settings.train_checkpoint_steps,
            )
    X, Y, pool = prepared.X, prepared.Y, prepared.pool
    choice = choose(
        candidates, X, Y, pool, spec.policy.cv_folds, seed=claim.revision, kind=spec.kind
    )
    phases("cross_validate")
    chosen = choice.learner
    if isinstance(chosen, FineTune):
        # The fit on every label runs over the train machines (labelloop.distributed); the
        # cross-validation fits before it ran here, with their own epoch checkpoints.
        chosen.set_world(world_config(rt, job_id, spec.id))
    views = chosen.views()
    model = chosen.fit(
        X.only(views),
        Y,
        pool=_pool_for(rt, claim, prepared, chosen),
        init=_warm_start(rt, spec, chosen),
    )
    phases("fit")
    with folder.writing_checkpoint(checkpoint) as tmp:
        model.save(tmp / "model")
        np.savez(tmp / "oos.npz", item_ids=np.asarray(prepared.labelled_ids), scores=choice.oos)
        (tmp / "choice.json").write_text(
            json.dumps({"candidates": choice.candidates, "reason": choice.reason})
        )
    phases("checkpoint")
    return Fitted(model, choice.oos, choice.candidates, choice.reason, resumed=False)


def _audit_scores(
    rt: Runtime,
    claim: Claim,
    prepared: Prepared,
    fitted: Fitted,
    auto: AutoLabelPolicy,
    held: list[int],
) -> np.ndarray:
    """The held-out labels' scores for the auto-labelling estimate: audits apart
    (``auto_label.audit_folds``), else the cross-validated ones."""
    if auto.audit_folds is not None and auto.evidence == "audits":
        model = fitted.model
        apart = autolabel.audit_scores(
            model,
            prepared.X.only(model.views()),
            prepared.Y,
            held,
            _pool_for(rt, claim, prepared, model),
            auto.audit_folds,
            seed=claim.revision,
        )
        if apart is not None:
            return apart
    return fitted.oos[held]


def _evaluate(
    rt: Runtime, claim: Claim, prepared: Prepared, fitted: Fitted, phases: Phases
) -> RunResult:
    """Out-of-sample scores, the auto-labelling estimate, the comparison with the served model,
    and pre-labels for the unlabelled pool (one pass, no second load)."""
    spec = claim.spec
    Y, oos, labelled_ids = prepared.Y, fitted.oos, prepared.labelled_ids
    cv = spec.kind.score(oos, Y)
    estimate = None
    auto = spec.auto_label
    if auto is not None:
        held = [
            p for p, i in enumerate(labelled_ids) if auto.evidence == "all" or i in claim.audits
        ]
        scores = _audit_scores(rt, claim, prepared, fitted, auto, held)
        estimate = autolabel.estimate_threshold(
            spec.kind.confidence(scores),
            spec.kind.correct(scores, Y[held]),
            auto,
            autolabel.model_label_target(auto, _pool_size(claim, prepared), len(labelled_ids)),
        )
    decision = _compare_with_served(rt, claim, Y, oos, labelled_ids)
    phases("compare")
    model = fitted.model
    unlabelled_pos = [p for p, item_id in enumerate(prepared.ok_ids) if item_id not in claim.labels]
    pool = _pool_for(rt, claim, prepared, model)
    pool_scores = _predict_in_chunks(model, pool, unlabelled_pos)
    weights = strategy_for(spec.policy).pool_weights(
        _similarity_view(prepared.pool, model), prepared.ok_ids
    )
    phases("predict_pool")
    metrics: dict[str, Any] = {
        "n_labels": len(labelled_ids),
        "n_pool": _pool_size(claim, prepared),
        # The items the training read: labelled ones and the pool's sample (``train_pool_sample``).
        "n_read": len(prepared.ok_ids),
        "learner": model.name,
        "learner_choice": {"reason": fitted.reason, "candidates": fitted.candidates},
        "cv_accuracy": round(cv.accuracy, 6),
        "cv_macro_f1": round(cv.macro_f1, 6),
        # The kind's other held-out scores: entity precision, recall and F1 for text spans.
        **{f"cv_{k}": v for k, v in cv.details.items()},
        "cv_folds": spec.policy.cv_folds,
        "fit_seconds": phases.seconds.get("fit"),
        "resumed_from_checkpoint": fitted.resumed,
        # Distributed fine-tuning: the world size of each attempt of the final fit.
        **({"world_sizes": model.worlds_} if hasattr(model, "worlds_") else {}),
        # Span NER: the passes its final fit ran (it stops early once the loss settles).
        **({"epochs_run": model.epochs_run_} if hasattr(model, "epochs_run_") else {}),
        **({"auto_label": estimate.as_dict()} if estimate is not None else {}),
        "phases_seconds": phases.seconds,
    }
    return RunResult(
        metrics,
        decision,
        0.0,
        model.name,
        prepared.ok_ids,
        [prepared.ok_ids[p] for p in unlabelled_pos],
        pool_scores,
        weights,
    )


def _pool_size(claim: Claim, prepared: Prepared) -> int:
    """The task's pool: what the training read, or every readable item when it read a sample."""
    return claim.n_pool if claim.sampled else len(prepared.ok_ids)


#: Items the sample is predicted in at a time (the learner's inputs of a chunk, not of the
#: sample).
PREDICT_CHUNK = 5_000
#: Pre-labels written per transaction: the promotion's transaction, and each one after it, holds
#: SQLite's write lock, which every person's claim and label waits for, for this many rows only
#: (5,000 rows held it for bursts of slow calls under 30 annotators).
WRITE_CHUNK = 1_000


def _predict_in_chunks(model: Learner, pool: Features, positions: list[int]) -> np.ndarray | None:
    """Scores of the pool's items at ``positions``, a chunk at a time: what a learner derives per
    item (a sparse matrix of words, a dense copy) is held for one chunk only."""
    if not positions:
        return None
    parts = [
        model.predict_proba(pool.take(positions[start : start + PREDICT_CHUNK]))
        for start in range(0, len(positions), PREDICT_CHUNK)
    ]
    return np.concatenate(parts)  # rows of scores, or a kind's answer objects (text spans)


def _write_prelabels(s: Any, spec: TaskSpec, version: int, result: RunResult, start: int) -> None:
    """One chunk of the promoted version's pre-labels (with the ranking ``/next`` reads)."""
    assert result.pool_scores is not None
    end = start + WRITE_CHUNK
    rows = prediction_rows(
        spec,
        version,
        result.unlabelled_ids[start:end],
        result.pool_scores[start:end],
        result.weights,
    )
    upsert_predictions(s, rows)


def _stream_prelabels(rt: Runtime, claim: Claim, result: RunResult) -> None:
    """The rest of a promoted version's pre-labels, a chunk per transaction: the store's write
    lock is never held for the whole pool (SQLite: every writer, people's labels included, waits
    for it). Stops as soon as the task serves another version; ``/next`` serves each item's
    freshest stored prediction meanwhile."""
    if result.pool_scores is None:
        return
    for start in range(WRITE_CHUNK, len(result.unlabelled_ids), WRITE_CHUNK):
        with rt.session() as s:
            task = s.get(Task, claim.spec.id)
            if task is None or task.served_version != claim.version:
                return
            _write_prelabels(s, claim.spec, claim.version, result, start)


def _similarity_view(pool: Features, model: Learner) -> Features:
    """The views that say which items are alike, for density weights: the model's own, except that
    fine-tuning's large feature maps give way to the embeddings when the pool has them."""
    views = model.views()
    if "maps" in views and "embedding" in pool.views:
        views = ["embedding"]
    return pool.only(views)


def _write_version(
    rt: Runtime,
    claim: Claim,
    prepared: Prepared,
    fitted: Fitted,
    result: RunResult,
    phases: Phases,
) -> None:
    """``model-time<N>``: the model, its out-of-sample scores, weights and metrics, whole or not
    at all."""
    spec = claim.spec
    with rt.folder(spec.id).writing_version(claim.version) as tmp:
        fitted.model.save(tmp / "model")
        np.savez_compressed(
            tmp / "oos.npz", item_ids=np.asarray(prepared.labelled_ids), scores=fitted.oos
        )
        if result.weights:
            np.savez_compressed(
                tmp / WEIGHTS_FILE,
                item_ids=np.fromiter(result.weights, dtype=np.int64),
                weights=np.fromiter(result.weights.values(), dtype=np.float64),
            )
        phases("write")
        result.train_seconds = phases.total()
        result.metrics["train_seconds"] = round(result.train_seconds, 4)
        (tmp / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    log.info(
        "task %s: trained model-time%s (%s) on %s labels in %.2f s %s",
        spec.id,
        claim.version,
        result.learner,
        len(prepared.labelled_ids),
        result.train_seconds,
        phases.seconds,
    )


def _remove_checkpoints(rt: Runtime, task_id: int, job_id: int) -> None:
    folder = rt.folder(task_id)
    for name in (f"job-{job_id}", f"job-{job_id}-epochs"):
        shutil.rmtree(folder.checkpoint_dir(name), ignore_errors=True)


def _resume(checkpoint: Path, labelled_ids: list[int]) -> Fitted | None:
    """What an earlier attempt of this job fitted, if any.

    Used only if it covers exactly the same labelled items (same revision, same items readable).
    """
    if not checkpoint.is_dir():
        return None
    try:
        # Span answers are objects (pickled by numpy); the folder is the store's own, like the
        # model's joblib file beside it.
        with np.load(checkpoint / "oos.npz", allow_pickle=True) as oos:
            if oos["item_ids"].tolist() != labelled_ids:
                return None
            scores = oos["scores"]
        meta = json.loads((checkpoint / "model" / "learner.json").read_text())
        model = learner_by_name(meta["learner"]).load(checkpoint / "model")
        choice = json.loads((checkpoint / "choice.json").read_text())
        return Fitted(model, scores, choice["candidates"], choice["reason"], resumed=True)
    except (OSError, ValueError, KeyError, LabelloopError):
        return None


def _compare_with_served(
    rt: Runtime,
    claim: Claim,
    Y: np.ndarray,
    oos: np.ndarray,
    labelled_ids: list[int],
) -> evaluation.Decision:
    """Candidate (out of sample) against the served model, on labels newer than the served model.

    The served model reads the features it was trained with (cached), whatever this run reads.
    """
    spec = claim.spec
    if spec.served_version is None or claim.served_revision is None:
        return evaluation.Decision(True, "first model of the task")
    newer = [
        p for p, i in enumerate(labelled_ids) if claim.label_revisions[i] > claim.served_revision
    ]
    if not newer:
        return evaluation.Decision(True, "no labels newer than the served model to compare on")
    try:
        served = load_model(rt, spec.id, spec.served_version)
        refs = {it.id: it for it in claim.items}
        batch = featurize(
            rt, spec.id, spec.category, served, [refs[labelled_ids[p]] for p in newer]
        )
    except LabelloopError:
        return evaluation.Decision(True, "the served model cannot be loaded")
    if len(batch.ok) != len(newer):
        return evaluation.Decision(True, "the served model cannot read every newer label")
    served_answers = served.predict_proba(batch.features)
    return evaluation.compare(
        spec.kind, oos[newer], served_answers, Y[newer], spec.policy.promotion_confidence
    )


def _record_items(rt: Runtime, hashes: dict[int, str], failed: dict[int, str]) -> None:
    """Remember what featurizing learned: content hashes, and items that cannot be read."""
    rows: list[dict[str, object]] = [
        {"id": i, "content_hash": h, "status": "ready", "error": None}
        for i, h in hashes.items()
        if i not in failed
    ]
    rows += [{"id": i, "status": "failed", "error": reason} for i, reason in failed.items()]
    if rows:
        with rt.session() as s:
            # Two shapes of row: one bulk update each.
            for keys in ({"id", "content_hash", "status", "error"}, {"id", "status", "error"}):
                batch = [r for r in rows if set(r) == keys]
                if batch:
                    s.execute(update(Item), batch)


def _finish(rt: Runtime, job_id: int, claim: Claim, result: RunResult) -> list[int]:
    """One transaction: record the version, promote by compare-and-set, store its pre-labels."""
    spec = claim.spec
    metrics, decision = result.metrics, result.decision
    pool_scores = result.pool_scores
    with rt.session() as s:
        job = s.get(Job, job_id)
        task = s.get(Task, spec.id)
        if job is None or task is None:
            return []
        if is_finished(job):
            return []  # a duplicate delivery finished first
        mv = s.scalar(select(ModelVersion).where(ModelVersion.job_key == job.key))
        assert mv is not None
        served = task.served_version
        promote, reason = decision.promote, decision.reason
        if served is not None and served != spec.served_version:
            # Someone promoted another version while we trained: compare again next time.
            promote, reason = False, f"version {served} was promoted while this one trained"
        if decision.n:
            metrics["compared_on"] = decision.n
            metrics["compared_candidate_correct"] = decision.candidate_correct
            metrics["compared_served_correct"] = decision.served_correct
            metrics["compared_served_version"] = spec.served_version
        if decision.candidate_score is not None:
            metrics["compared_candidate_score"] = decision.candidate_score
            metrics["compared_served_score"] = decision.served_score
        metrics["decision"] = reason
        mv.status, mv.metrics, mv.train_seconds = "ready", metrics, result.train_seconds
        mv.learner = result.learner
        mv.n_labels = metrics["n_labels"]
        follow: list[Job] = []
        promoted = False
        if promote:
            cond = (
                Task.served_version.is_(None) if served is None else Task.served_version == served
            )
            swapped = s.execute(
                update(Task)
                .where(Task.id == spec.id, cond)
                .values(served_version=mv.version, promotions=Task.promotions + 1)
            )
            promoted = swapped.rowcount == 1  # type: ignore[attr-defined]
        if promoted:
            s.refresh(task)
            mv.promoted, mv.promoted_at = True, utcnow()
            item_ids = result.unlabelled_ids
            if pool_scores is not None:  # the first chunk now, the rest in transactions of its own
                _write_prelabels(s, spec, mv.version, result, 0)
            relabel = spec.auto_label is not None and claim.sampled
            if spec.auto_label is not None:
                # The items it scored get their model labels now; when it read a sample, only
                # those items' labels are read and retracted, and the rest of the pool's are
                # re-derived by the rescore chunks, each for its own items.
                threshold = (metrics.get("auto_label") or {}).get("threshold")
                applied = autolabel.apply_model_labels(
                    s,
                    spec,
                    mv.version,
                    item_ids,
                    pool_scores if pool_scores is not None else np.zeros((0, len(spec.labels))),
                    threshold,
                    within=item_ids if claim.sampled else None,
                )
                if not claim.sampled:
                    metrics["auto_label"] = {
                        **metrics["auto_label"],
                        "model_labelled": applied.labelled,
                    }
                    mv.metrics = dict(metrics)
            # The rest of the pool (beyond the sample, and items that arrived while training
            # ran) is re-predicted in the background, most uncertain first; the version serves
            # meanwhile (``/predictions`` scores an item it has not rescored on demand). Model
            # labels to re-derive: every unlabelled item, those scored on demand included.
            follow.append(rescore_job(s, task, mv.version, everything=relabel))
        retention.mark_pruned(s, task, rt.settings.keep_versions)
        finish(job, {"version": mv.version, "promoted": promoted, "reason": reason})
        follow += after_training(s, task)
        return [j.id for j in follow]
