"""Adding items to a task and reading one back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop.errors import FetchError, InvalidInput, NotFound
from labelloop.fetch import LinkChecker, text_content
from labelloop.learners.base import Features
from labelloop.loop.features import is_text
from labelloop.loop.scheduling import featurize_jobs
from labelloop.loop.selection import signatures
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.schemas import MAX_ITEM_DATA_CHARS, ItemCreate
from labelloop.service.common import enqueue, get_task_row
from labelloop.store.models import Annotation, Item, Job, Prediction, Task, lottery_of
from labelloop.store.upsert import allocate_ids

#: One item to add; the shape (and its checks) is :class:`labelloop.schemas.ItemCreate`.
ItemIn = ItemCreate
#: The most characters an item's data holds (a link, or a whole text).
MAX_DATA_CHARS = MAX_ITEM_DATA_CHARS


def check_links(rt: Runtime, task_id: int, items: list[ItemIn]) -> None:
    """Refuse, before anything is stored, an image link that fetching would refuse (a path outside
    the import roots, a non-public address, another task's upload); the error names the item."""
    checker = LinkChecker(rt.settings, rt.folder(task_id))
    for n, spec in enumerate(items):
        try:
            checker.check(spec.data)
        except FetchError as exc:
            raise type(exc)(f"items[{n}]: {exc.message}") from None


def add_items(rt: Runtime, task_id: int, items: list[ItemIn]) -> dict[str, Any]:
    """Store items (idempotent by ``external_id``) and queue their featurization."""
    added, jobs = store_items(rt, task_id, items)
    enqueue(rt, jobs)
    return added


def store_items(rt: Runtime, task_id: int, items: list[ItemIn]) -> tuple[dict[str, Any], list[Job]]:
    """Store items as :func:`add_items` does, but hand back their featurize jobs (committed,
    not yet given to the backend) instead of queueing them: a caller that computes the items'
    features itself right away queues them after, so that a worker does not compute the same
    features at the same time (the job then finds them cached)."""
    if len(items) > rt.settings.max_items_per_request:
        raise InvalidInput(f"at most {rt.settings.max_items_per_request} items per request")
    ext = [i.external_id for i in items if i.external_id is not None]
    if len(set(ext)) != len(ext):
        raise InvalidInput("external_id repeats within the request")
    with rt.reading() as s:
        category = get_task_row(s, task_id).category
    if not is_text(category):
        check_links(rt, task_id, items)
    for attempt in (1, 2):
        try:
            with rt.session() as s:
                return store_in(s, get_task_row(s, task_id), items)
        except IntegrityError:
            # Another writer (a concurrent request, Label Studio's write-behind) stored one of
            # these external ids first: looked up again, it is found and not added twice.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def store_in(s: Session, task: Task, items: Sequence[ItemIn]) -> tuple[dict[str, Any], list[Job]]:
    """Store items in an open transaction (idempotent by ``external_id``); the caller checked
    their links and their number. Returns the answer and the featurize jobs to queue after the
    commit. Two writers of the same new external id: the second one's commit fails on the unique
    key, and its retry finds the item."""
    task_id = task.id
    ext = [i.external_id for i in items if i.external_id is not None]
    jobs: list[Job] = []
    text = is_text(task.category)
    of_task = TaskSpec.of(task)
    costly = of_task.has_learner and any(f.cacheable for f in of_task.new_learner().featurizers())
    known: dict[str | None, int] = {}
    if ext:
        for chunk_start in range(0, len(ext), 500):
            chunk = ext[chunk_start : chunk_start + 500]
            known.update(
                s.execute(
                    select(Item.external_id, Item.id).where(
                        Item.task_id == task_id, Item.external_id.in_(chunk)
                    )
                ).all()
            )
    out: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    for spec in items:
        if spec.external_id is not None and spec.external_id in known:
            out.append(
                {
                    "id": known[spec.external_id],
                    "external_id": spec.external_id,
                    "created": False,
                }
            )
            continue
        new.append(
            {
                "task_id": task_id,
                "external_id": spec.external_id,
                "data": spec.data,
                # A text is its own content; it still waits for featurizing if that is costly
                # (sentence embeddings), so that training never embeds the whole pool at once.
                "content_hash": text_content(spec.data).content_hash if text else None,
                "status": "ready" if text and not costly else "pending",
                "lottery": lottery_of(task.salt, spec.external_id, spec.data),
                "signature": None,
            }
        )
    cheap = [row for row in new if row["status"] == "ready"]
    if cheap:  # texts that no featurize job follows: signed by their words now
        signed = signatures(Features({"text": [row["data"] for row in cheap]}))
        for row, sig in zip(cheap, signed, strict=True):
            row["signature"] = sig
    # Ids first, then one executemany without RETURNING on the connection (no ORM object): an
    # INSERT ... RETURNING of many rows is one long statement per 1,000 rows that psycopg parses
    # placeholder by placeholder (70% of a PostgreSQL import's time); a plain executemany is one
    # short statement, prepared once and pipelined (docs/BENCHMARKS.md, "A large task").
    table = cast(Table, Item.__table__)
    ids = allocate_ids(s, table, len(new))
    for i, row in zip(ids, new, strict=True):
        row["id"] = i
    if new:
        s.connection().execute(insert(table), new)
    out += [
        {"id": i, "external_id": row["external_id"], "created": True}
        for i, row in zip(ids, new, strict=True)
    ]
    pending = [i for i, row in zip(ids, new, strict=True) if row["status"] == "pending"]
    if pending:
        jobs = featurize_jobs(s, task_id, pending)
    return {"created": len(new), "existing": len(items) - len(new), "items": out}, jobs


def get_item(rt: Runtime, task_id: int, item_id: int) -> dict[str, Any]:
    with rt.session() as s:
        get_task_row(s, task_id)
        item = s.get(Item, item_id)
        if item is None or item.task_id != task_id:
            raise NotFound(f"task {task_id} has no item {item_id}")
        history = s.scalars(
            select(Annotation).where(Annotation.item_id == item_id).order_by(Annotation.id)
        ).all()
        pred = s.get(Prediction, item_id)
        human = [a for a in history if a.source == "human"]
        model = [a for a in history if a.source == "model"]
        current = human[-1] if human else (model[-1] if model else None)
        return {
            "id": item.id,
            "external_id": item.external_id,
            "data": item.data,
            "status": item.status,
            "error": item.error,
            "labels": None if current is None else current.labels,
            "label_source": None if current is None or current.labels is None else current.source,
            "annotations": [
                {
                    "revision": a.id,
                    "labels": a.labels,
                    "source": a.source,
                    "annotator": a.annotator,
                    "model_version": a.model_version,
                    "shown_version": a.shown_version,
                    "edited": a.edited,
                    "created_at": a.created_at.isoformat(),
                }
                for a in history
            ],
            "prediction": None
            if pred is None
            else {"model_version": pred.version, "labels": pred.labels, "score": pred.score},
        }
