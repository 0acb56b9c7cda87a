"""A job that raises ends ``failed`` with its error, in every backend, and stays so after a restart.

Two real faults: a featurize job whose task's learner cannot be built (it raises after the job was
claimed, with items waiting for it) and a job whose payload cannot be read (it raises before).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from labelloop.config import Settings
from labelloop.jobs.local import LocalJobs
from labelloop.jobs.state import JobState
from labelloop.runtime import Runtime
from labelloop.store.models import Item, Job
from tests.jobs.faults import check_failed, crashing_task, ended, job_row, unreadable_job
from tests.support import wait_until


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
