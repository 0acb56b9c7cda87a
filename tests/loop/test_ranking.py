"""``/next`` and ``/predictions`` read the ranking kept in the store with ``LIMIT``: the statements
they run and the rows they read are the same for a small pool and a pool ten times larger."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.engine import cursor as sa_cursor

from labelloop.loop.policy import AutoLabelPolicy
from labelloop.loop.ranking import set_covered, window
from labelloop.runtime import Runtime
from labelloop.schemas import ItemCreate, TaskCreate
from labelloop.service import predictions, tasks
from labelloop.service.items import add_items
from labelloop.store.models import Annotation, Item, ModelVersion, Task
from labelloop.store.upsert import upsert_predictions

LABELS = ["a", "b"]


@dataclass
class Reads:
    statements: int = 0
    rows: int = 0


@contextmanager
def counting(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    """Statements sent to the store and rows fetched back from it, while the block runs."""
    reads = Reads()

    def count(_conn: Any, *_args: Any) -> None:
        reads.statements += 1

    classes = [
        sa_cursor.CursorFetchStrategy,
        sa_cursor.BufferedRowCursorFetchStrategy,
        sa_cursor.FullyBufferedCursorFetchStrategy,
    ]
    with monkeypatch.context() as m:
        for cls in classes:
            for name in ("fetchone", "fetchmany", "fetchall"):
                if name not in vars(cls):
                    continue
                original = vars(cls)[name]

                def wrapped(
                    self: Any, *a: Any, _f: Any = original, _n: str = name, **k: Any
                ) -> Any:
                    got = _f(self, *a, **k)
                    reads.rows += (got is not None) if _n == "fetchone" else len(got)
                    return got

                m.setattr(cls, name, wrapped)
        event.listen(rt.engine, "before_cursor_execute", count)
        try:
            yield reads
        finally:
            event.remove(rt.engine, "before_cursor_execute", count)


def make_task(rt: Runtime, n_items: int, auto_label: bool) -> int:
    """A text task of ``n_items``, a served version that scored all of them, 20 human labels and
    (with ``auto_label``) model labels on half the pool."""
    policy: dict[str, Any] = {"learner": "tfidf-svm", "learner_params": {"embeddings": False}}
    if auto_label:
        policy["auto_label"] = AutoLabelPolicy().model_dump(mode="json")
    task = tasks.create_task(
        rt,
        TaskCreate(
            name=f"big-{n_items}", category="text-classification", labels=LABELS, policy=policy
        ),
    )
    t = task["id"]
    with rt.session() as s:
        s.execute(
            insert(Item),
            [{"task_id": t, "data": f"text {i}", "status": "ready"} for i in range(n_items)],
        )
        ids = list(s.scalars(select(Item.id).where(Item.task_id == t).order_by(Item.id)))
        s.add(
            ModelVersion(
                task_id=t,
                version=0,
                job_key=f"k{t}",
                learner="tfidf-svm",
                status="ready",
                label_revision=0,
                metrics={},
            )
        )
        s.get_one(Task, t).served_version = 0
        upsert_predictions(
            s,
            [
                {
                    "item_id": i,
                    "task_id": t,
                    "version": 0,
                    "labels": ["a"],
                    "scores": [0.6, 0.4],
                    "score": 0.6,
                    "uncertainty": (i * 7919 % 1000) / 1000,
                }
                for i in ids
            ],
        )
        s.add_all(
            Annotation(task_id=t, item_id=i, labels=["a"], source="human", annotator="x")
            for i in ids[:20]
        )
        if auto_label:
            model = ids[20 : n_items // 2]
            s.add_all(
                Annotation(task_id=t, item_id=i, labels=["b"], source="model", model_version=0)
                for i in model
            )
            set_covered(s, model, True)
    return t


@pytest.mark.parametrize("auto_label", [False, True])
def test_next_and_predictions_read_the_same_whatever_the_pool(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, auto_label: bool
) -> None:
    seen = []
    for n_items in (300, 3000):
        t = make_task(rt, n_items, auto_label)
        predictions.next_items(rt, t, 5, "ada")  # someone holds items already
        with counting(rt, monkeypatch) as nxt:
            got = predictions.next_items(rt, t, 5, "bob")
        assert len(got["items"]) == 5
        assert all(it["prediction"]["status"] == "ok" for it in got["items"])
        item = got["items"][0]["id"]
        with counting(rt, monkeypatch) as one:
            assert predictions.get_prediction(rt, t, item)["model_version"] == 0
        seen.append((n_items, nxt.statements, nxt.rows, one.statements, one.rows))
    (_, *small), (_, *large) = seen
    assert small == large, seen
    assert 0 < small[1] < 3000 / 5  # a small fraction of the larger pool


def test_the_ranking_puts_unscored_first_then_the_freshest_priorities(rt: Runtime) -> None:
    t = make_task(rt, 50, auto_label=False)
    with rt.session() as s:
        ids = list(s.scalars(select(Item.id).where(Item.task_id == t).order_by(Item.id)))
        new = s.scalar(
            insert(Item).values(task_id=t, data="new", status="ready").returning(Item.id)
        )
        ranked = window(s, t, 5, order="rank", uncovered=True, skip=set(ids[:20]))
        by_priority = sorted(ids[20:], key=lambda i: -((i * 7919 % 1000) / 1000))
        assert ranked == [new, *by_priority[:4]]
        # A fresher score moves an item; a model label takes it out of the ranking for people.
        upsert_predictions(
            s,
            [
                {
                    "item_id": new,
                    "task_id": t,
                    "version": 1,
                    "labels": ["a"],
                    "scores": [1.0, 0.0],
                    "score": 1.0,
                    "uncertainty": 0.0,
                }
            ],
        )
        set_covered(s, [by_priority[0]], True)
        assert (
            window(s, t, 3, order="rank", uncovered=True, skip=set(ids[:20])) == (by_priority[1:4])
        )
        # The stable random order covers every readable item, and skips what it is told to.
        lottery = window(s, t, 100)
        assert sorted(lottery) == sorted([*ids, new])
        assert window(s, t, 5, skip={lottery[0]}) == lottery[1:6]


def test_rescoring_starts_with_the_most_uncertain_and_reads_a_chunk_whatever_the_pool(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelloop.loop.labels import current_labels
    from labelloop.loop.rescoring import Plan, mark_rescored, pick

    seen = []
    for n_items in (300, 3000):
        t = make_task(rt, n_items, auto_label=False)
        with rt.session() as s:
            ids = list(s.scalars(select(Item.id).where(Item.task_id == t).order_by(Item.id)))
            labelled = current_labels(s, t)
            plan = Plan(planner=1, promotion=1, everything=True, head_left=10_000)
            with counting(rt, monkeypatch) as reads:
                first, after = pick(s, t, 1, plan, 50, labelled)
            seen.append(reads.rows)
            # Most uncertain first, nobody's labelled item; the next pick goes on after it.
            priority = [(i * 7919 % 1000) / 1000 for i in first]
            assert priority == sorted(priority, reverse=True) and len(first) == 50
            assert not set(first) & set(labelled)
            rest = [*first]
            mark_rescored(s, first, 1)  # as each chunk does when it writes
            while after.phase != "done":
                more, after = pick(s, t, 1, after, 50, labelled)
                mark_rescored(s, more, 1)
                rest += more
            assert sorted(rest) == ids[20:]  # every unlabelled item, once
    assert seen[0] == seen[1]  # the rows a pick reads do not grow with the pool


def test_a_seed_fixes_the_tasks_order_and_another_seed_changes_it(rt: Runtime) -> None:
    """The order items are first handed out in (and audits drawn from) follows the task's salt:
    the same ``policy.seed`` gives the same order in a new task, another seed another order."""

    def order(name: str, seed: int) -> list[str | None]:
        t = tasks.create_task(
            rt,
            TaskCreate(
                name=name,
                category="text-classification",
                labels=LABELS,
                policy={"learner_params": {"embeddings": False}, "seed": seed},
            ),
        )["id"]
        add_items(
            rt, t, [ItemCreate(data=f"text number {i}", external_id=str(i)) for i in range(40)]
        )
        with rt.session() as s:
            ids = window(s, t, 40)
            by_id = dict(
                s.execute(select(Item.id, Item.external_id).where(Item.task_id == t)).all()
            )
        return [by_id[i] for i in ids]

    first = order("seeded-a", seed=1)
    assert order("seeded-b", seed=1) == first
    assert order("seeded-c", seed=2) != first
    assert sorted(first, key=lambda e: int(e or 0)) == [str(i) for i in range(40)]
