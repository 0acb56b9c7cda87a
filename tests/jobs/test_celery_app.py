"""The Celery app's parts that need no broker: roles, limits, one runtime per worker process."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy import text

from labelloop.config import Settings
from labelloop.errors import InvalidInput
from labelloop.jobs.celery_app import (
    JOB_TASKS,
    ROLE_DEFAULTS,
    dead_letter_queue,
    make_app,
    soft_limit,
)
from labelloop.jobs.celery_backend import CeleryJobs
from labelloop.jobs.celery_worker import WorkerState, register_tasks, run_worker
from labelloop.runtime import Runtime
from tests.jobs.faults import check_failed, crashing_task, job_row, unreadable_job


def test_roles_and_their_defaults() -> None:
    assert set(ROLE_DEFAULTS) == {"data", "train", "inference"}
    assert ROLE_DEFAULTS["train"].concurrency == 1 and ROLE_DEFAULTS["train"].prefetch == 1
    with pytest.raises(InvalidInput, match="unknown role 'gpu'"):
        run_worker(Settings(), "gpu")


def test_time_limits_per_queue() -> None:
    assert soft_limit(1800) == 1620 and soft_limit(30) == 25 and soft_limit(1) == 1
    settings = Settings(train_time_limit_s=1200, job_time_limit_s=300, predict_timeout_s=4)
    app = make_app(settings)
    register_tasks(app, WorkerState(settings, app))
    train = app.tasks[JOB_TASKS["train"]]
    assert (train.time_limit, train.soft_time_limit) == (1200, soft_limit(1200))
    assert train.acks_late and train.reject_on_worker_lost and train.ignore_result
    assert app.tasks[JOB_TASKS["data"]].time_limit == 300
    assert app.tasks["labelloop.predict_data"].time_limit == 12
    assert not app.tasks["labelloop.predict_data"].ignore_result


def _child_runtime(state: WorkerState, parent_id: int, out: multiprocessing.Queue[object]) -> None:
    rt = state.runtime()
    with rt.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    out.put((id(rt) != parent_id, isinstance(rt.jobs, CeleryJobs) and rt.jobs.patient))


@pytest.mark.postgres
def test_a_forked_worker_process_builds_its_own_runtime(tmp_path: Path, pg_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    app = make_app(settings)
    state = WorkerState(settings, app)
    parent = state.runtime()
    assert state.runtime() is parent  # one per process
    with parent.engine.connect() as conn:  # a pooled connection the child inherits
        conn.execute(text("SELECT 1"))
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[object] = ctx.Queue()
    child = ctx.Process(target=_child_runtime, args=(state, id(parent), out))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and out.get(timeout=5) == (True, True)
    # The parent's pooled connection was left alone by the child and still works.
    with parent.engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_a_job_that_raises_on_a_celery_worker_ends_failed(
    settings: Settings, digit_files: list[tuple[str, str]]
) -> None:
    """What a worker process runs for a message (the registered task, without the broker)."""
    rt = Runtime(settings, migrate_schema=True)
    crash, item_id = crashing_task(rt, digit_files[0][0])
    unreadable = unreadable_job(rt, job_row(rt, crash).task_id)
    app = make_app(settings)
    state = WorkerState(settings, app)
    register_tasks(app, state)
    for job_id in (crash, unreadable):
        assert app.tasks[JOB_TASKS["data"]].run(job_id) == []  # recorded, not raised
    check_failed(rt, crash, item_id, unreadable)
    # A redelivered message finds the job over: nothing runs again.
    assert app.tasks[JOB_TASKS["data"]].run(crash) == []
    assert job_row(rt, crash).attempts == 1
    state.runtime().close()
    rt.close()


def test_the_dead_letter_queue_is_a_quorum_queue() -> None:
    dead = dead_letter_queue(Settings())
    assert dead.durable and dead.queue_arguments == {"x-queue-type": "quorum"}
    assert dead_letter_queue(Settings(broker_queue_type="classic")).queue_arguments == {}
