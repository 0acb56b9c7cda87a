"""One entry point for every job, whichever backend runs it (local processes or Celery)."""

from __future__ import annotations

from collections.abc import Callable

from labelloop.errors import NotFound
from labelloop.loop.autolabel import run_autolabel_job
from labelloop.loop.items import run_featurize_job
from labelloop.loop.prediction import run_predict_job
from labelloop.loop.training import run_train_job
from labelloop.runtime import Runtime
from labelloop.store.models import Job

RUNNERS: dict[str, Callable[[Runtime, int], list[int]]] = {
    "train": run_train_job,
    "featurize": run_featurize_job,
    "predict": run_predict_job,
    "autolabel": run_autolabel_job,
}

#: The queue (and worker role) each kind of job runs on.
QUEUES = {"featurize": "data", "train": "train", "predict": "inference", "autolabel": "train"}


def job_kind(rt: Runtime, job_id: int) -> str | None:
    with rt.session() as s:
        job = s.get(Job, job_id)
        return None if job is None else job.kind


def execute(rt: Runtime, job_id: int) -> list[int]:
    """Run a job by id; returns the ids of follow-up jobs to enqueue. Unknown ids are a no-op."""
    kind = job_kind(rt, job_id)
    if kind is None:
        return []
    runner = RUNNERS.get(kind)
    if runner is None:
        raise NotFound(f"no runner for job kind {kind!r}")
    return runner(rt, job_id)
