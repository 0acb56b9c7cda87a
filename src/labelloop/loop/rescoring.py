"""A promotion's rescoring plan: which items it re-predicts, one chunk at a time.

After a promotion the pool is re-predicted in the background by ``predict`` jobs of
``rescore_chunk`` items (:func:`labelloop.loop.prediction.run_predict_job`). The plan is a chain:
the ``rescore`` job picks the first chunk, and each chunk picks the next one and queues it in
the transaction that stores its own pre-labels. Picking reads the rows after the last one the
previous pick read, in an order an index keeps (keyset pagination): a chunk's planning reads
about a chunk of rows, whatever the pool, and no job holds more than a chunk of ids. A newer
promotion (or a rollback) stops the chain at the next chunk: that chunk skips, and queues
nothing.

Two phases, so that what people are handed follows every model and the rest is not rewritten
by every promotion:

- **head**: the first ``rescore_head`` items of the ranking ``/next`` reads (``Item.covered,
  rank, lottery``: the freshest scores' most uncertain first, unscored ones before them,
  auto-labelled ones last);
- **tail**: then every other item, stalest first (``Item.rescored``: the promotion whose
  rescoring last re-predicted it, 0 before any), most uncertain first among equally stale ones.
  A promotion that comes while the tail is rescored stops it; the next promotion's tail starts
  with what the stopped one had not reached, so the tail is rescored once between the promotions
  that come faster than it, not from its start each time.

Each chunk marks its items ``rescored`` with the plan's promotion, in its own transaction, so a
pick never takes an item the plan did already (one whose new rank moved it past the pick's
place). What a plan takes: every readable item nobody labelled that it has not rescored and,
unless the payload says ``all``, that the served version has not scored yet (the training's
sample, items scored on demand). ``all`` (a promotion by hand; a training that read a sample of a
task with auto-labelling) takes them too: each chunk re-derives its items' model labels, and
what ``/predictions`` scored on demand has had none derived.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from sqlalchemy import Select, or_, select, tuple_, update
from sqlalchemy.orm import Session

from labelloop.store.models import Item, Job, Prediction, Task

Phase = Literal["head", "tail", "done"]

#: At most this many rows a pick reads per statement beyond the ids it still needs (room for
#: the labelled items it leaves out).
PAGE = 1000

#: The orders of the two phases (each served by an index on ``items``: ``ix_items_task_covered_rank``
#: and ``ix_items_task_rescored``); ``Item.id`` ends each, so a position is a single row.
HEAD_ORDER = (Item.covered, Item.rank, Item.lottery, Item.id)
TAIL_ORDER = (Item.rescored, Item.covered, Item.rank, Item.lottery, Item.id)


@dataclass(frozen=True)
class Plan:
    """Where a promotion's rescoring stands, carried by each chunk job (``payload["plan"]``)."""

    #: The ``rescore`` job that started the chain (in the chunks' keys).
    planner: int
    #: ``Task.promotions`` when it started: a chunk of another promotion skips.
    promotion: int
    #: Every unlabelled item, those the version scored already included.
    everything: bool
    #: The number of the chunk that carries it.
    seq: int = 0
    phase: Phase = "head"
    #: Head items still to take.
    head_left: int = 0
    #: The position (the phase's order) of the last row read, None at the phase's start.
    after: list[Any] | None = None

    def payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, payload: dict[str, Any]) -> Plan | None:
        """The plan a chunk job carries (None: a job without one, which plans nothing)."""
        plan = payload.get("plan")
        return None if plan is None else cls(**plan)


def _query(task_id: int, version: int, plan: Plan) -> Select[Any]:
    head = plan.phase == "head"
    order = HEAD_ORDER if head else TAIL_ORDER
    # The head's order is the ranking's index; ``rescored + 0`` keeps a planner without
    # statistics (SQLite's) from taking the tail's index for its range and sorting the pool.
    done = (Item.rescored + 0) if head else Item.rescored
    query = (
        select(*order)
        .where(
            Item.task_id == task_id,
            Item.status != "failed",
            done < plan.promotion,
        )
        .order_by(*order)
    )
    if not plan.everything:
        query = query.outerjoin(Prediction, Prediction.item_id == Item.id).where(
            or_(Prediction.version.is_(None), Prediction.version != version)
        )
    if plan.after is not None:
        query = query.where(tuple_(*order) > tuple(plan.after))
    return query


def _take(
    s: Session,
    task_id: int,
    version: int,
    plan: Plan,
    want: int,
    labelled: Collection[int],
    taken: set[int],
) -> tuple[list[int], Plan, bool]:
    """Up to ``want`` ids of the plan's phase from its position on, leaving out ``labelled`` and
    ``taken`` (to which they are added); the plan moved past the last row read, and whether the
    phase's order ran out."""
    ids: list[int] = []
    while True:
        # What it still needs, and room for the rows it may leave out (another page if not).
        limit = want - len(ids) + min(PAGE, len(labelled) + len(taken))
        page = s.execute(_query(task_id, version, plan).limit(limit)).all()
        for n, row in enumerate(page):
            item = int(row[-1])
            if item not in taken and item not in labelled:
                ids.append(item)
                taken.add(item)
                if len(ids) == want:
                    return ids, replace(plan, after=list(row)), n + 1 == len(page) < limit
        if page:
            plan = replace(plan, after=list(page[-1]))
        if len(page) < limit:
            return ids, plan, True


def pick(
    s: Session,
    task_id: int,
    version: int,
    plan: Plan,
    size: int,
    labelled: Collection[int],
    writing: Collection[int] = (),
) -> tuple[list[int], Plan]:
    """The next chunk of the plan (at most ``size`` ids; empty when it is done) and the plan
    that follows it. It leaves out the ``labelled`` items, and the chunk being ``writing`` (not
    marked yet: the tail would take it again)."""
    ids: list[int] = []
    taken = {int(i) for i in writing}
    while len(ids) < size and plan.phase != "done":
        if plan.phase == "head":
            want = min(size - len(ids), plan.head_left)
            if want <= 0:
                plan = replace(plan, phase="tail", after=None)
                continue
            got, plan, ended = _take(s, task_id, version, plan, want, labelled, taken)
            plan = replace(plan, head_left=plan.head_left - len(got))
            ids += got
            if ended:
                plan = replace(plan, phase="tail", after=None)
        else:
            got, plan, ended = _take(s, task_id, version, plan, size - len(ids), labelled, taken)
            ids += got
            if ended:
                plan = replace(plan, phase="done", after=None)
    return ids, replace(plan, seq=plan.seq + 1)


def chunk_key(task_id: int, version: int, plan: Plan) -> str:
    return f"predict:{task_id}:{version}:{plan.promotion}:{plan.planner}:{plan.seq}"


def queue_chunk(
    s: Session, task: Task, version: int, item_ids: Sequence[int], plan: Plan
) -> Job | None:
    """The chunk job carrying ``item_ids`` and ``plan`` (None: no ids, or it exists already: a
    rerun of the job that queues it)."""
    key = chunk_key(task.id, version, plan)
    if not item_ids or s.scalar(select(Job.id).where(Job.key == key)) is not None:
        return None
    job = Job(
        task_id=task.id,
        kind="predict",
        key=key,
        payload={
            "version": version,
            "item_ids": [int(i) for i in item_ids],
            "plan": plan.payload(),
        },
    )
    s.add(job)
    s.flush()
    return job


def current(task: Task, version: int, plan: Plan) -> bool:
    """The plan's promotion is the task's latest, and its version still serves."""
    return task.served_version == version and task.promotions == plan.promotion


def mark_rescored(s: Session, item_ids: Sequence[int], promotion: int) -> None:
    """These items were re-predicted by the rescoring of ``promotion``."""
    ids = sorted(int(i) for i in item_ids)
    for start in range(0, len(ids), 1000):
        s.execute(
            update(Item).where(Item.id.in_(ids[start : start + 1000])).values(rescored=promotion)
        )
