"""The featurize job: fetch, decode and featurize new items into the task's ``Preprocess/``."""

from __future__ import annotations

from sqlalchemy import select, update

from labelloop.jobs.state import claim, fail, finish
from labelloop.loop.features import ItemRef, featurize, pool_featurizers
from labelloop.loop.selection import signatures
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Item, Job, Task


def run_featurize_job(rt: Runtime, job_id: int) -> list[int]:
    with rt.session() as s:  # the claim is committed first: whatever raises next, it is on record
        job = s.get(Job, job_id)
        if job is None or not claim(job):
            return []
        task_id, item_ids = job.task_id, list(job.payload["item_ids"])
    with rt.session() as s:
        task = s.get(Task, task_id)
        if task is None:
            return []
        spec = TaskSpec.of(task)
        refs = [
            ItemRef(i.id, i.data, i.content_hash)
            for i in s.scalars(select(Item).where(Item.id.in_(item_ids)))
        ]
        featurizers = pool_featurizers(s, spec)
    batch = featurize(rt, spec.id, spec.category, featurizers, refs)
    ok_ids = [refs[i].id for i in batch.ok]
    # Near-copy signatures now, while the features are at hand: /next compares them, not features.
    signed = dict(zip(ok_ids, signatures(batch.features), strict=True))
    rows: list[dict[str, object]] = []
    for ref in refs:
        if ref.id in batch.failed:
            rows.append({"id": ref.id, "status": "failed", "error": batch.failed[ref.id]})
        else:
            row: dict[str, object] = {"id": ref.id, "status": "ready", "error": None}
            row["content_hash"] = batch.hashes.get(ref.id, ref.content_hash)
            row["signature"] = signed.get(ref.id)
            rows.append(row)
    with rt.session() as s:
        if rows:
            s.execute(update(Item), rows)
        job = s.get(Job, job_id)
        if job is not None:
            finish(job, {"ready": len(ok_ids), "failed": len(batch.failed)})
    return []


def fail_featurize_job(rt: Runtime, job_id: int, reason: str) -> list[int]:
    """A featurize job that raised: it fails, and so do its items still pending (with the reason),
    so that none waits for features that will never come."""
    with rt.session() as s:
        job = s.get(Job, job_id)
        if job is None or not fail(job, reason):
            return []
        s.execute(
            update(Item)
            .where(Item.id.in_(job.payload.get("item_ids", [])), Item.status == "pending")
            .values(status="failed", error=f"featurizing failed: {reason}")
        )
    return []
