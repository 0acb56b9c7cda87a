"""One entry point for every job, whichever backend runs it (local processes or Celery), and the
one table of job kinds: what runs each, on which queue, in which order, and what a failure undoes."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from labelloop.errors import LabelloopError, NotFound, Unavailable
from labelloop.jobs.state import fail_by_id
from labelloop.loop.items import fail_featurize_job, run_featurize_job
from labelloop.loop.prediction import fail_predict_job, run_predict_job, run_rescore_job
from labelloop.loop.scheduling import after_training
from labelloop.runtime import Runtime
from labelloop.store.models import Job, Task

log = logging.getLogger(__name__)

#: ``(rt, job_id) -> follow-up job ids``.
Runner = Callable[[Runtime, int], list[int]]
#: ``(rt, job_id, reason) -> follow-up job ids``: records the failure of a job that raised.
FailureHandler = Callable[[Runtime, int, str], list[int]]


def fail_job(rt: Runtime, job_id: int, reason: str) -> list[int]:
    """The default for a job that raised: failed with its reason, nothing follows."""
    with rt.session() as s:
        fail_by_id(s, job_id, reason)
    return []


def fail_train_job(rt: Runtime, job_id: int, reason: str) -> list[int]:
    """A training job that raised outside its own error handling: failed, and the pending run (or
    the run the policy now wants) follows, so that the task does not stop training."""
    with rt.session() as s:
        job = fail_by_id(s, job_id, reason)
        task = None if job is None else s.get(Task, job.task_id)
        return [] if task is None else [j.id for j in after_training(s, task)]


def lazy(ref: str) -> Runner:
    """The runner ``"module:function"``, imported on its first call: training and auto-labelling
    need scikit-learn (and torch), which a process that only publishes jobs (a cluster's API)
    should not import."""
    module, attr = ref.split(":")

    def run(rt: Runtime, job_id: int) -> list[int]:
        runner: Runner = getattr(importlib.import_module(module), attr)
        return runner(rt, job_id)

    run.__qualname__ = run.__name__ = attr
    return run


#: Modules that job runners import lazily; a worker imports them before its first job.
HEAVY_RUNNERS = ("labelloop.loop.training", "labelloop.loop.autolabel")


@dataclass(frozen=True)
class JobKind:
    run: Runner
    #: The Celery queue (and worker role) that runs it.
    queue: str
    #: Lower runs first in the local pool: a model update should not wait behind featurization,
    #: and featurizing comes before re-predicting, so that the pool's predictions read the
    #: features (sentence embeddings) the featurize jobs computed instead of computing them again.
    priority: int
    on_failure: FailureHandler = fail_job


KINDS: dict[str, JobKind] = {
    "train": JobKind(lazy("labelloop.loop.training:run_train_job"), "train", 0, fail_train_job),
    "featurize": JobKind(run_featurize_job, "data", 1, fail_featurize_job),
    "autolabel": JobKind(lazy("labelloop.loop.autolabel:run_autolabel_job"), "train", 2),
    # A chunk of a rescoring queues the next (also when it fails: fail_predict_job).
    "predict": JobKind(run_predict_job, "inference", 2, fail_predict_job),
    # Starts a promotion's rescoring of the pool: its first ``predict`` chunk.
    "rescore": JobKind(run_rescore_job, "inference", 2),
}

#: The queue (and worker role) each kind of job runs on.
QUEUES = {kind: k.queue for kind, k in KINDS.items()}


def job_kind(rt: Runtime, job_id: int) -> str | None:
    with rt.session() as s:
        job = s.get(Job, job_id)
        return None if job is None else job.kind


def execute(rt: Runtime, job_id: int) -> list[int]:
    """Run a job by id; returns the ids of follow-up jobs to enqueue. Unknown ids are a no-op.

    A job that raises ends ``failed`` with its error (its kind's failure handler undoes what must
    not be left half-done), except when the store itself is away (:class:`Unavailable`): then
    nothing can be recorded, the error propagates and the backend runs the job again later.
    """
    kind = job_kind(rt, job_id)
    if kind is None:
        return []
    spec = KINDS.get(kind)
    if spec is None:
        raise NotFound(f"no runner for job kind {kind!r}")
    try:
        return spec.run(rt, job_id)
    except Unavailable:
        raise
    except LabelloopError as exc:
        log.warning("%s job %s failed: %s", kind, job_id, exc.message)
        return spec.on_failure(rt, job_id, exc.message)
    except Exception as exc:
        log.exception("%s job %s crashed", kind, job_id)
        return spec.on_failure(rt, job_id, f"{kind} job crashed: {type(exc).__name__}: {exc}")
