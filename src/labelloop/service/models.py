"""Model versions: listing, promoting (and rolling back), asking for training."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from labelloop.errors import Conflict, NotFound
from labelloop.loop.scheduling import active_training, lock_task, request_training, rescore_job
from labelloop.runtime import Runtime
from labelloop.service.common import enqueue, get_task_row
from labelloop.store.models import Annotation, Job, ModelVersion, Task, utcnow


def live_accuracy(rt: Runtime, task_id: int) -> dict[int, tuple[int, int]]:
    """Version -> (agreed, submitted) over human labels that were shown that version's pre-label."""
    with rt.session() as s:
        rows = s.execute(
            select(Annotation.shown_version, Annotation.edited, func.count())
            .where(
                Annotation.task_id == task_id,
                Annotation.source == "human",
                Annotation.shown_version.is_not(None),
                Annotation.edited.is_not(None),
            )
            .group_by(Annotation.shown_version, Annotation.edited)
        ).all()
    out: dict[int, list[int]] = {}
    for version, edited, n in rows:
        if version is None:
            continue
        agreed, total = out.setdefault(int(version), [0, 0])
        out[int(version)] = [agreed + (0 if edited else int(n)), total + int(n)]
    return {v: (a, t) for v, (a, t) in out.items()}


def version_view(
    mv: ModelVersion, served: int | None, live: dict[int, tuple[int, int]]
) -> dict[str, Any]:
    agreed, total = live.get(mv.version, (0, 0))
    return {
        "version": mv.version,
        "status": mv.status,
        "serving": mv.version == served,
        "promoted": mv.promoted,
        "learner": mv.learner,
        "label_revision": mv.label_revision,
        "n_labels": mv.n_labels,
        "metrics": mv.metrics,
        "train_seconds": mv.train_seconds,
        "live_accuracy": (agreed / total) if total else None,
        "live_n": total,
        "created_at": mv.created_at.isoformat(),
        "promoted_at": mv.promoted_at.isoformat() if mv.promoted_at else None,
    }


def list_versions(rt: Runtime, task_id: int) -> list[dict[str, Any]]:
    live = live_accuracy(rt, task_id)
    with rt.session() as s:
        task = get_task_row(s, task_id)
        versions = s.scalars(
            select(ModelVersion)
            .where(ModelVersion.task_id == task_id)
            .order_by(ModelVersion.version)
        ).all()
        return [version_view(v, task.served_version, live) for v in versions]


def promote(rt: Runtime, task_id: int, version: int) -> dict[str, Any]:
    """Serve ``version`` (a newer one, or an earlier one: a rollback) from the next request on."""
    with rt.session() as s:
        task = lock_task(s, task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        mv = s.scalar(
            select(ModelVersion).where(
                ModelVersion.task_id == task_id, ModelVersion.version == version
            )
        )
        if mv is None:
            raise NotFound(f"task {task_id} has no model version {version}")
        if mv.status != "ready":
            raise Conflict(f"version {version} is {mv.status}, not ready to serve")
        jobs: list[Job] = []
        if task.served_version != version:
            s.execute(
                update(Task)
                .where(Task.id == task_id)
                .values(served_version=version, promotions=Task.promotions + 1)
            )
            s.refresh(task)
            mv.promoted, mv.promoted_at = True, utcnow()
            # The pool re-predicted in background chunks, each re-deriving its items' model
            # labels on a task with auto-labelling (every unlabelled item: this version may
            # have stored pre-labels before a later one changed their model labels).
            jobs = [rescore_job(s, task, version, everything=True)]
        result = {"task_id": task_id, "served_version": version}
    enqueue(rt, jobs)
    return result


def train_now(rt: Runtime, task_id: int) -> dict[str, Any]:
    """Ask for a training run now; if one is running, exactly one more follows it."""
    with rt.session() as s:
        task = lock_task(s, task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        job = request_training(s, task, force=True)
        active = active_training(s, task_id)
        out = {
            "job_id": job.id if job is not None else (active.id if active else None),
            "state": job.state if job is not None else (active.state if active else None),
            "pending": task.train_pending,
        }
        new = [job] if job is not None and job.state == "queued" else []
    enqueue(rt, new)
    return out


def list_jobs(rt: Runtime, task_id: int, limit: int = 50) -> list[dict[str, Any]]:
    with rt.session() as s:
        get_task_row(s, task_id)
        jobs = s.scalars(
            select(Job).where(Job.task_id == task_id).order_by(Job.id.desc()).limit(limit)
        ).all()
        return [
            {
                "id": j.id,
                "kind": j.kind,
                "state": j.state,
                "attempts": j.attempts,
                "worker": j.worker,
                "world": (j.payload or {}).get("world"),
                "fits": (j.payload or {}).get("fits", []),
                "error": j.error,
                "result": j.result,
                "created_at": j.created_at.isoformat(),
                "started_at": j.started_at.isoformat() if j.started_at else None,
                "finished_at": j.finished_at.isoformat() if j.finished_at else None,
            }
            for j in jobs
        ]
