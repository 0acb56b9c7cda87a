"""A job that raises ends ``failed`` with its error, in every backend, and stays so after a restart.

Two real faults: a featurize job whose task's learner cannot be built (it raises after the job was
claimed, with items waiting for it) and a job whose payload cannot be read (it raises before).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import update

from labelloop.config import Settings
from labelloop.jobs.local import LocalJobs
from labelloop.jobs.state import JobState
from labelloop.runtime import Runtime
from labelloop.store.models import Item, Job, Task
from tests.support import wait_until


def crashing_task(rt: Runtime, image: str) -> tuple[int, int]:
    """A task whose learner cannot be built (a learner parameter that is not a number), one item,
    and its featurize job: ``(job id, item id)``."""
    with rt.session() as s:
        task = Task(
            name="crash",
            category="image-classification",
            extra="multi-class",
            labels=["a", "b"],
            policy={"learner_params": {"image_size": "not a number"}},
            salt="s",
        )
        s.add(task)
        s.flush()
        item = Item(task_id=task.id, data=image)
        s.add(item)
        s.flush()
        job = Job(
            task_id=task.id,
            kind="featurize",
            key=f"featurize:{task.id}:{item.id}",
            payload={"item_ids": [item.id]},
        )
        s.add(job)
        s.flush()
        return job.id, item.id


def unreadable_job(rt: Runtime, task_id: int) -> int:
    """A featurize job without the payload it needs: it raises before it can claim anything."""
    with rt.session() as s:
        job = Job(task_id=task_id, kind="featurize", key=f"featurize:{uuid.uuid4().hex}")
        s.add(job)
        s.flush()
        return job.id


def job_row(rt: Runtime, job_id: int) -> Job:
    with rt.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def ended(rt: Runtime, job_id: int) -> Job | None:
    job = job_row(rt, job_id)
    return job if job.state in (JobState.DONE, JobState.FAILED) else None


def check_failed(rt: Runtime, crash: int, item_id: int, unreadable: int) -> None:
    job = wait_until(lambda: ended(rt, crash), 120, "the crashing job to end")
    assert job.state == JobState.FAILED
    assert job.error and "featurize job crashed" in job.error
    assert job.worker and job.started_at is not None and job.finished_at is not None
    with rt.session() as s:
        item = s.get(Item, item_id)
        assert item is not None and item.status == "failed"
        assert item.error and "featurizing failed" in item.error
    other = wait_until(lambda: ended(rt, unreadable), 120, "the unreadable job to end")
    assert other.state == JobState.FAILED and other.error and "KeyError" in other.error


@pytest.mark.parametrize("threads", [True, False], ids=["threads", "processes"])
def test_a_job_that_raises_ends_failed_in_the_local_backend(
    tmp_path: Path, image_root: Path, digit_files: list[tuple[str, str]], threads: bool
) -> None:
    rt = Runtime(Settings(data_dir=tmp_path / "d", import_roots=[image_root]), migrate_schema=True)
    crash, item_id = crashing_task(rt, digit_files[0][0])
    unreadable = unreadable_job(rt, job_row(rt, crash).task_id)
    backend = LocalJobs(rt, workers=1, threads=threads)
    rt.attach_jobs(backend)
    backend.start()  # the jobs are in the store as queued: a start runs them
    check_failed(rt, crash, item_id, unreadable)
    backend.stop()

    # After a restart nothing runs them again: failed is final.
    with rt.session() as s:
        s.execute(update(Item).where(Item.id == item_id).values(status="pending"))
    again = LocalJobs(rt, workers=1, threads=True)
    again.start()
    assert again.status()["queued"] == 0 and again.status()["running"] == []
    again.stop()
    assert job_row(rt, crash).attempts == 1
    rt.close()


def test_the_jobs_of_a_crashed_server_are_failed_not_stuck(
    rt: Runtime, digit_files: list[tuple[str, str]]
) -> None:
    """On SQLite and PostgreSQL: a job left ``running`` by a server that died, then raising when it
    runs again, ends failed, and the one whose worker keeps dying is given up."""
    crash, item_id = crashing_task(rt, digit_files[0][0])
    unreadable = unreadable_job(rt, job_row(rt, crash).task_id)
    stuck = unreadable_job(rt, job_row(rt, crash).task_id)
    with rt.session() as s:
        s.execute(update(Job).where(Job.id == crash).values(state=JobState.RUNNING, attempts=1))
        # Three runs started and none ended: its worker died each time.
        s.execute(update(Job).where(Job.id == stuck).values(state=JobState.RUNNING, attempts=3))
    backend = LocalJobs(rt, workers=1, threads=True)
    rt.attach_jobs(backend)
    backend.start()
    check_failed(rt, crash, item_id, unreadable)
    given_up = wait_until(lambda: ended(rt, stuck), 60, "the stuck job to end")
    assert given_up.state == JobState.FAILED and given_up.error == "gave up after 3 attempts"
