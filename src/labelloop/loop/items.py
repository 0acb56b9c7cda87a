"""The featurize job: fetch, decode and featurize new items into the task's ``Preprocess/``."""

from __future__ import annotations

from sqlalchemy import select, update

from labelloop.loop.features import ItemRef, featurize
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Item, Job, Task, utcnow


def run_featurize_job(rt: Runtime, job_id: int) -> list[int]:
    with rt.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state in ("done", "failed"):
            return []
        task = s.get(Task, job.task_id)
        if task is None:
            return []
        job.state, job.attempts, job.started_at = "running", job.attempts + 1, utcnow()
        spec = TaskSpec.of(task)
        refs = [
            ItemRef(i.id, i.data, i.content_hash)
            for i in s.scalars(select(Item).where(Item.id.in_(job.payload["item_ids"])))
        ]
    batch = featurize(rt, spec.id, spec.category, spec.new_learner(), refs)
    ok_ids = [refs[i].id for i in batch.ok]
    rows: list[dict[str, object]] = []
    for ref in refs:
        if ref.id in batch.failed:
            rows.append({"id": ref.id, "status": "failed", "error": batch.failed[ref.id]})
        else:
            row: dict[str, object] = {"id": ref.id, "status": "ready", "error": None}
            row["content_hash"] = batch.hashes.get(ref.id, ref.content_hash)
            rows.append(row)
    with rt.session() as s:
        if rows:
            s.execute(update(Item), rows)
        job = s.get(Job, job_id)
        if job is not None:
            job.state, job.finished_at = "done", utcnow()
            job.result = {"ready": len(ok_ids), "failed": len(batch.failed)}
    return []
