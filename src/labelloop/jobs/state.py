"""A job's life, in one place: every kind of job (featurize, predict, autolabel, train) and every
backend (local worker processes, Celery workers) moves a job through these helpers only.

::

    queued ──claim──▶ running ──finish──▶ done
       ▲                 │  └───fail────▶ failed
       └────release──────┤  (the server stopped: the attempt does not count)
                         └─(worker died: run again; claim counts the attempt, and after
                            MAX_ATTEMPTS it fails the job instead of running it)

``claim`` records who runs the job (``worker``) and when it started (``started_at``); ``finish`` and
``fail`` record when it ended. A finished job is never claimed again, so a message delivered twice
does nothing the second time. A job that raises ends ``failed`` with its error (see
:func:`labelloop.loop.executor.execute`), never ``running`` forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.runtime import worker_identity
from labelloop.store.models import (
    ACTIVE_JOB_STATES,
    FINISHED_JOB_STATES,
    Job,
    JobState,
    utcnow,
)

__all__ = [
    "ACTIVE_JOB_STATES",
    "FINISHED_JOB_STATES",
    "MAX_ATTEMPTS",
    "JobState",
    "claim",
    "fail",
    "fail_by_id",
    "finish",
    "is_finished",
    "release",
]

#: Runs of one job (each claim is one, a worker that died mid-job included) before it is failed.
MAX_ATTEMPTS = 3


def is_finished(job: Job) -> bool:
    return job.state in FINISHED_JOB_STATES


def claim(job: Job) -> bool:
    """Mark ``job`` running in this worker; False when there is nothing to run.

    Nothing to run: the job is already over (untouched), or it has used up its attempts (it is
    then failed here, with the reason).
    """
    if is_finished(job):
        return False
    if job.attempts >= MAX_ATTEMPTS:
        fail(job, f"gave up after {job.attempts} attempts")
        return False
    job.state = JobState.RUNNING
    job.attempts += 1
    job.started_at = utcnow()
    job.worker = worker_identity()
    return True


def finish(job: Job, result: dict[str, Any] | None = None) -> bool:
    """Mark ``job`` done with its result; False (and untouched) when it was already over."""
    if is_finished(job):
        return False
    job.state, job.result, job.error = JobState.DONE, result, None
    _ended(job)
    return True


def fail(job: Job, reason: str) -> bool:
    """Mark ``job`` failed with the reason people will read; False when it was already over."""
    if is_finished(job):
        return False
    job.state, job.error = JobState.FAILED, reason
    _ended(job)
    return True


def _ended(job: Job) -> None:
    """A job that ends without having run (superseded, given up) started when it ended."""
    job.finished_at = utcnow()
    if job.started_at is None:
        job.started_at = job.finished_at


def fail_by_id(session: Session, job_id: int, reason: str) -> Job | None:
    """Fail the job with this id if it is not over yet; returns it when it was failed here."""
    job = session.get(Job, job_id)
    if job is None or not fail(job, reason):
        return None
    return job


def release(session: Session, handed_out: Mapping[int, datetime]) -> list[int]:
    """Put back jobs a stopping server abandoned: queued again, the attempt not counted.

    ``handed_out`` maps job ids to when they were handed to a worker; only a job claimed since
    then is put back (an older claim was an attempt of its own, by a worker that died).
    """
    back = []
    rows = session.scalars(
        select(Job).where(Job.id.in_(list(handed_out)), Job.state == JobState.RUNNING)
    )
    for job in rows:
        started = job.started_at
        if started is not None and started.tzinfo is None:  # SQLite returns naive UTC
            started = started.replace(tzinfo=handed_out[job.id].tzinfo)
        if started is not None and started >= handed_out[job.id]:
            job.state, job.attempts = JobState.QUEUED, max(0, job.attempts - 1)
            back.append(job.id)
    return sorted(back)
