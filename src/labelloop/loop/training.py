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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update

from labelloop.errors import LabelloopError, Unavailable
from labelloop.jobs.state import claim, fail, finish, is_finished
from labelloop.learners import Features, Learner, learner_by_name
from labelloop.loop import autolabel, evaluation
from labelloop.loop.features import ItemRef, featurize
from labelloop.loop.labels import indicator, labelled_at, top_score
from labelloop.loop.prediction import WEIGHTS_FILE, load_model, prediction_rows
from labelloop.loop.scheduling import after_training, repredict_jobs, unlabelled_item_ids
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
    items: list[ItemRef]
    #: Labelled items that ``/next`` handed out as random audits (held-out evidence).
    audits: frozenset[int] = frozenset()


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
        # The pool: featurized items, plus labelled ones still pending (featurized here). Items
        # still waiting for their featurize job join the pool at the next training.
        items = [
            ItemRef(i.id, i.data, i.content_hash)
            for i in s.scalars(
                select(Item)
                .where(Item.task_id == task.id, Item.status != "failed")
                .order_by(Item.id)
            )
            if i.status == "ready" or i.id in labels
        ]
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
        )


def _fail(rt: Runtime, job_id: int, reason: str) -> list[int]:
    with rt.session() as s:
        job_task = s.scalar(select(Job.task_id).where(Job.id == job_id))
    if job_task is not None:
        shutil.rmtree(rt.folder(job_task).checkpoint_dir(f"job-{job_id}"), ignore_errors=True)
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
        return _train(rt, job_id, claim)
    except Unavailable:
        raise  # the store is away: the job runs again (see loop.executor), it has not failed
    except LabelloopError as exc:
        log.warning("training job %s of task %s failed: %s", job_id, spec.id, exc.message)
        return _fail(rt, job_id, exc.message)
    except Exception as exc:  # a learner bug must not loop forever; the reason is kept
        log.exception("training job %s of task %s crashed", job_id, spec.id)
        return _fail(rt, job_id, f"training crashed: {type(exc).__name__}: {exc}")


def _train(rt: Runtime, job_id: int, claim: Claim) -> list[int]:
    spec = claim.spec
    started = time.perf_counter()
    phases: dict[str, float] = {}
    mark = started

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = round(now - mark, 4)
        mark = now

    learner = spec.new_learner()
    batch = featurize(rt, spec.id, spec.category, learner, claim.items)
    _record_items(rt, batch.hashes, batch.failed)
    phase("featurize")

    ok_ids = [claim.items[i].id for i in batch.ok]
    labelled_pos = [p for p, item_id in enumerate(ok_ids) if item_id in claim.labels]
    labelled_ids = [ok_ids[p] for p in labelled_pos]
    Y = indicator([claim.labels[i] for i in labelled_ids], spec.labels)
    if len(labelled_ids) < 2 or (not spec.multi_label and len(np.unique(Y.argmax(1))) < 2):
        return _fail(rt, job_id, "fewer than two usable labelled items of different classes")
    X = batch.features.take(labelled_pos)
    pool = batch.features

    folder = rt.folder(spec.id)
    checkpoint = f"job-{job_id}"
    resumed = _resume(folder.checkpoint_dir(checkpoint), labelled_ids)
    if resumed is not None:
        model, oos = resumed
        phase("resume")
    else:
        oos = evaluation.out_of_sample(
            learner, X, Y, pool, spec.policy.cv_folds, seed=claim.revision
        )
        phase("cross_validate")
        model = learner.fit(X, Y, pool=pool, init=_warm_start(rt, spec, learner))
        phase("fit")
        with folder.writing_checkpoint(checkpoint) as tmp:
            model.save(tmp / "model")
            np.savez(tmp / "oos.npz", item_ids=np.asarray(labelled_ids), scores=oos)
        phase("checkpoint")
    cv = evaluation.score(oos, Y, spec.multi_label)
    estimate = None
    auto = spec.policy.auto_label
    if auto is not None:
        held = [
            p for p, i in enumerate(labelled_ids) if auto.evidence == "all" or i in claim.audits
        ]
        estimate = autolabel.estimate_threshold(
            top_score(oos[held], spec.multi_label),
            evaluation.correct(oos[held], Y[held], spec.multi_label),
            auto,
            autolabel.model_label_target(auto, len(ok_ids), len(labelled_ids)),
        )
    decision = _compare_with_served(rt, claim, X, Y, oos, labelled_ids)
    phase("compare")

    # Pre-labels for the unlabelled pool come with the version (one pass, no second load).
    unlabelled_pos = [p for p, item_id in enumerate(ok_ids) if item_id not in claim.labels]
    pool_scores = model.predict_proba(pool.take(unlabelled_pos)) if unlabelled_pos else None
    weights = strategy_for(spec.policy).pool_weights(pool, ok_ids)
    phase("predict_pool")
    metrics: dict[str, Any] = {
        "n_labels": len(labelled_ids),
        "n_pool": len(ok_ids),
        "cv_accuracy": round(cv.accuracy, 6),
        "cv_macro_f1": round(cv.macro_f1, 6),
        "cv_folds": spec.policy.cv_folds,
        "fit_seconds": phases.get("fit"),
        "resumed_from_checkpoint": resumed is not None,
        **({"auto_label": estimate.as_dict()} if estimate is not None else {}),
        "phases_seconds": phases,
    }
    with folder.writing_version(claim.version) as tmp:
        model.save(tmp / "model")
        np.savez_compressed(tmp / "oos.npz", item_ids=np.asarray(labelled_ids), scores=oos)
        if weights:
            np.savez_compressed(
                tmp / WEIGHTS_FILE,
                item_ids=np.fromiter(weights, dtype=np.int64),
                weights=np.fromiter(weights.values(), dtype=np.float64),
            )
        phase("write")
        train_seconds = time.perf_counter() - started
        metrics["train_seconds"] = round(train_seconds, 4)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log.info(
        "task %s: trained model-time%s on %s labels in %.2f s %s",
        spec.id,
        claim.version,
        len(labelled_ids),
        train_seconds,
        phases,
    )

    follow = _finish(
        rt,
        job_id,
        claim,
        metrics,
        decision,
        train_seconds,
        unlabelled_pos,
        ok_ids,
        pool_scores,
        weights,
    )
    shutil.rmtree(folder.checkpoint_dir(checkpoint), ignore_errors=True)
    return follow


def _resume(checkpoint: Path, labelled_ids: list[int]) -> tuple[Learner, np.ndarray] | None:
    """The model and out-of-sample scores an earlier attempt of this job fitted, if any.

    Used only if it covers exactly the same labelled items (same revision, same items readable).
    """
    if not checkpoint.is_dir():
        return None
    try:
        with np.load(checkpoint / "oos.npz") as oos:
            if oos["item_ids"].tolist() != labelled_ids:
                return None
            scores = oos["scores"]
        meta = json.loads((checkpoint / "model" / "learner.json").read_text())
        return learner_by_name(meta["learner"]).load(checkpoint / "model"), scores
    except (OSError, ValueError, KeyError, LabelloopError):
        return None


def _compare_with_served(
    rt: Runtime,
    claim: Claim,
    X: Features,
    Y: np.ndarray,
    oos: np.ndarray,
    labelled_ids: list[int],
) -> evaluation.Decision:
    """Candidate (out of sample) against the served model, on labels newer than the served model."""
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
    except LabelloopError:
        return evaluation.Decision(True, "the served model cannot be loaded")
    served_ok = evaluation.correct(served.predict_proba(X.take(newer)), Y[newer], spec.multi_label)
    cand_ok = evaluation.correct(oos[newer], Y[newer], spec.multi_label)
    return evaluation.should_promote(cand_ok, served_ok, spec.policy.promotion_confidence)


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


def _finish(
    rt: Runtime,
    job_id: int,
    claim: Claim,
    metrics: dict[str, Any],
    decision: evaluation.Decision,
    train_seconds: float,
    unlabelled_pos: list[int],
    ok_ids: list[int],
    pool_scores: np.ndarray | None,
    weights: dict[int, float] | None = None,
) -> list[int]:
    spec = claim.spec
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
        metrics["decision"] = reason
        mv.status, mv.metrics, mv.train_seconds = "ready", metrics, train_seconds
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
            item_ids = [ok_ids[p] for p in unlabelled_pos]
            if pool_scores is not None:
                rows = prediction_rows(spec, mv.version, item_ids, pool_scores, weights)
                upsert_predictions(s, rows)
            if spec.policy.auto_label is not None:
                threshold = (metrics.get("auto_label") or {}).get("threshold")
                applied = autolabel.apply_model_labels(
                    s,
                    spec,
                    mv.version,
                    item_ids,
                    pool_scores if pool_scores is not None else np.zeros((0, len(spec.labels))),
                    threshold,
                )
                metrics["auto_label"] = {
                    **metrics["auto_label"],
                    "model_labelled": applied.labelled,
                }
                mv.metrics = dict(metrics)
            # Items that arrived while training ran still need pre-labels from this version.
            known = set(ok_ids)
            late = [i for i in unlabelled_item_ids(s, spec.id) if i not in known]
            follow += repredict_jobs(s, task, mv.version, late)
        finish(job, {"version": mv.version, "promoted": promoted, "reason": reason})
        follow += after_training(s, task)
        return [j.id for j in follow]
