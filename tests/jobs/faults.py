"""Jobs that raise, for the fault tests of every backend."""

from __future__ import annotations

import uuid

from labelloop.jobs.state import JobState
from labelloop.runtime import Runtime
from labelloop.store.models import Item, Job, Task
from tests.support import wait_until


def crashing_task(rt: Runtime, image: str) -> tuple[int, int]:
    """A task whose learner cannot be built (a stored learner parameter that is not a number, as
    an older version could write), one item, and its featurize job, which raises after claiming
    the item: ``(job id, item id)``."""
    with rt.session() as s:
        task = Task(
            name="crash",
            category="image-classification",
            extra="multi-class",
            labels=["a", "b"],
            policy={"learner": "pool-svm", "learner_params": {"image_size": "not a number"}},
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
    assert job.error and "image_size" in job.error
    assert job.worker and job.started_at is not None and job.finished_at is not None
    with rt.session() as s:
        item = s.get(Item, item_id)
        assert item is not None and item.status == "failed"
        assert item.error and "featurizing failed" in item.error
    other = wait_until(lambda: ended(rt, unreadable), 120, "the unreadable job to end")
    assert other.state == JobState.FAILED and other.error and "KeyError" in other.error
