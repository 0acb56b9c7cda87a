"""The store on SQLite and PostgreSQL: append-only labels, one active training per task, cascades."""

from __future__ import annotations

import itertools
import threading

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from labelloop.loop.labels import (
    ANONYMOUS,
    LabelSnapshot,
    current_labels,
    human_labels,
    label_revision,
    labelled_at,
)
from labelloop.loop.scheduling import after_training, request_training
from labelloop.runtime import Runtime
from labelloop.service.tasks import TaskCreate, create_task, delete_task
from labelloop.store.models import Annotation, Item, Job, Prediction, Task, utcnow
from labelloop.store.upsert import upsert_predictions

NAMES = itertools.count(1)


def new_task(rt: Runtime, **policy: object) -> int:
    spec = TaskCreate(
        name=f"t{next(NAMES)}",
        category="text-classification",
        labels=["a", "b"],
        policy=policy or {},
    )  # type: ignore[arg-type]
    return int(create_task(rt, spec)["id"])


def add(rt: Runtime, task_id: int, n: int) -> list[int]:
    with rt.session() as s:
        items = [Item(task_id=task_id, data=f"text {i}", status="ready") for i in range(n)]
        s.add_all(items)
        s.flush()
        return [i.id for i in items]


def annotate(rt: Runtime, task_id: int, pairs: list[tuple[int, list[str] | None]]) -> None:
    with rt.session() as s:
        s.add_all(
            Annotation(task_id=task_id, item_id=i, labels=ls, source="human") for i, ls in pairs
        )


def test_annotations_are_append_only(rt: Runtime) -> None:
    t = new_task(rt)
    [i, j] = add(rt, t, 2)
    annotate(rt, t, [(i, ["a"]), (j, ["b"])])
    with rt.session() as s:
        first = label_revision(s, t)
    annotate(rt, t, [(i, ["b"])])  # a correction
    annotate(rt, t, [(j, None)])  # a retraction
    with rt.session() as s:
        assert current_labels(s, t) == {i: ["b"]}
        assert current_labels(s, t, revision=first) == {
            i: ["a"],
            j: ["b"],
        }  # the snapshot is intact
        assert labelled_at(s, t)[i][1] == label_revision(s, t) - 1
        history = s.scalars(
            select(Annotation.labels).where(Annotation.item_id == i).order_by(Annotation.id)
        ).all()
        assert history == [["a"], ["b"]]


def test_a_label_snapshot_brought_up_to_date_reads_what_the_whole_log_says(rt: Runtime) -> None:
    """``POST /annotations`` reads the labels before the write lock and only the newer rows under
    it: corrections, retractions and labels again after a retraction all land as in the log."""
    t = new_task(rt)
    other = new_task(rt)
    [i, j, k] = add(rt, t, 3)
    [x] = add(rt, other, 1)
    annotate(rt, t, [(i, ["a"]), (j, ["b"])])
    with rt.reading() as s:
        snap = LabelSnapshot.read(s, t)
    annotate(rt, t, [(i, ["b"]), (j, None), (k, ["a"])])
    annotate(rt, other, [(x, ["a"])])
    with rt.session() as s:
        s.add(Annotation(task_id=t, item_id=k, labels=["b"], source="model"))
    with rt.session() as s:
        assert snap.current(s) == current_labels(s, t) == {i: ["b"], k: ["a"]}
    annotate(rt, t, [(j, ["a"])])
    with rt.session() as s:
        assert snap.current(s) == current_labels(s, t) == {i: ["b"], j: ["a"], k: ["a"]}
        assert snap.revision == max(r for _, r in labelled_at(s, t).values())


def test_the_human_labels_a_process_keeps_follow_the_log(rt: Runtime) -> None:
    """``/next`` and ``POST /annotations`` read the labels a process keeps, brought up to date
    with the newer rows: they equal the whole log's, what was read before never changes, and a
    task created where a deleted one was does not inherit its labels."""
    t = new_task(rt)
    [i, j] = add(rt, t, 2)
    annotate(rt, t, [(i, ["a"])])
    with rt.reading() as s:
        first = human_labels(s, s.get_one(Task, t))
    annotate(rt, t, [(j, ["b"]), (i, None)])
    with rt.session() as s:
        s.add(Annotation(task_id=t, item_id=j, labels=["a"], source="human", annotator="ada"))
    with rt.reading() as s:
        now = human_labels(s, s.get_one(Task, t))
        assert dict(now.labels) == current_labels(s, t) == {j: ["a"]}
        assert dict(now.people) == {j: {ANONYMOUS, "ada"}}
        assert now.revision == label_revision(s, t)
    assert dict(first.labels) == {i: ["a"]} and first.revision < now.revision
    delete_task(rt, t)
    again = new_task(rt)
    [k] = add(rt, again, 1)
    annotate(rt, again, [(k, ["b"])])
    with rt.reading() as s:
        assert dict(human_labels(s, s.get_one(Task, again)).labels) == {k: ["b"]}


def test_at_most_one_active_training_per_task(rt: Runtime) -> None:
    t = new_task(rt)
    with pytest.raises(IntegrityError), rt.session() as s:
        s.add(Job(task_id=t, kind="train", key="k1", payload={}))
        s.add(Job(task_id=t, kind="train", key="k2", payload={}))
    with rt.session() as s:  # a finished job does not count
        s.add(Job(task_id=t, kind="train", key="k1", state="done", payload={}))
        s.add(Job(task_id=t, kind="train", key="k2", payload={}))


def test_labels_during_training_cause_exactly_one_more_run(rt: Runtime) -> None:
    t = new_task(rt, min_labels=4, growth=0.1)
    ids = add(rt, t, 40)
    annotate(rt, t, [(i, ["a" if n % 2 else "b"]) for n, i in enumerate(ids[:4])])
    with rt.session() as s:
        task = s.get(Task, t)
        assert task is not None
        first = request_training(s, task)
        assert first is not None and first.payload["n_labels"] == 4
    # Many labels arrive while the job is active: no second job, one pending run.
    for n, i in enumerate(ids[4:20]):
        annotate(rt, t, [(i, ["a" if n % 2 else "b"])])
        with rt.session() as s:
            task = s.get(Task, t)
            assert task is not None
            assert request_training(s, task) is None
    with rt.session() as s:
        task = s.get(Task, t)
        assert task is not None and task.train_pending
        job = s.get(Job, first.id)
        assert job is not None
        job.state = "done"
        follow = after_training(s, task)
        assert len(follow) == 1 and follow[0].payload["n_labels"] == 20
        assert not task.train_pending
    with rt.session() as s:
        task = s.get(Task, t)
        assert task is not None
        assert after_training(s, task) == []  # exactly one, not one per label
        active = s.scalars(select(Job).where(Job.task_id == t, Job.state == "queued")).all()
        assert len(active) == 1


def test_delete_cascades(rt: Runtime) -> None:
    t, other = new_task(rt), new_task(rt)
    ids = add(rt, t, 3)
    kept = add(rt, other, 2)
    annotate(rt, t, [(ids[0], ["a"])])
    annotate(rt, other, [(kept[0], ["b"])])
    delete_task(rt, t)
    with rt.session() as s:
        assert s.scalars(select(Item).where(Item.task_id == t)).all() == []
        assert s.scalars(select(Annotation).where(Annotation.task_id == t)).all() == []
        assert len(s.scalars(select(Item).where(Item.task_id == other)).all()) == 2
        assert current_labels(s, other) == {kept[0]: ["b"]}


def test_a_reading_transaction_reads_beside_a_writer(rt: Runtime) -> None:
    """``/next`` and ``/predictions`` read while a promotion writes a pool's pre-labels: a reading
    transaction sees the last committed state at once instead of queueing for the write lock."""
    t = create_task(
        rt, TaskCreate(name="beside", category="text-classification", labels=["a", "b"])
    )
    done = threading.Event()
    seen: list[str] = []

    def read() -> None:
        with rt.reading() as s:
            seen.append(s.get_one(Task, t["id"]).name)
        done.set()

    with rt.session() as writer:  # holds the write lock until the block ends
        writer.get_one(Task, t["id"]).name = "renamed"
        writer.flush()
        reader = threading.Thread(target=read)
        reader.start()
        assert done.wait(20), "the reading transaction waited for the writer"
    reader.join()
    assert seen == ["beside"]


def test_predictions_lock_their_items_in_item_order(rt: Runtime) -> None:
    """Two writers of the same items' pre-labels (a ``/next`` scoring unscored items beside a
    training's chunk) write them in one order, whatever order each computed them in: PostgreSQL
    found two such writers deadlocked at 1M items when each wrote in its own order."""
    t = new_task(rt)
    ids = add(rt, t, 2_500)  # more than one statement's 1,000 rows
    rows = [
        {
            "item_id": i,
            "task_id": t,
            "version": 0,
            "labels": ["a"],
            "scores": {"a": 0.6, "b": 0.4},
            "score": 0.6,
            "uncertainty": 0.4 + n / 10_000,
            "created_at": utcnow(),
        }
        for n, i in enumerate(reversed(ids))
    ]
    written: list[int] = []
    ranked: list[int] = []

    def seen(
        conn: object, cursor: object, statement: str, params: object, context: object, many: bool
    ) -> None:
        compiled = getattr(context, "compiled_parameters", None) or []
        if statement.startswith("INSERT INTO predictions"):
            written.extend(int(p["item_id"]) for p in compiled)
        elif statement.startswith("UPDATE items SET rank"):
            ranked.extend(int(p["b_id"]) for p in compiled)

    event.listen(rt.engine, "before_cursor_execute", seen)
    try:
        with rt.session() as s:
            upsert_predictions(s, rows)
    finally:
        event.remove(rt.engine, "before_cursor_execute", seen)
    assert written == ranked == sorted(ids)
    with rt.reading() as s:
        assert (
            len(s.scalars(select(Prediction.item_id).where(Prediction.task_id == t)).all()) == 2_500
        )
        ranks = dict(s.execute(select(Item.id, Item.rank).where(Item.task_id == t)).all())
    assert ranks[ids[-1]] == pytest.approx(-0.4)  # each item's own rank, whatever the order
