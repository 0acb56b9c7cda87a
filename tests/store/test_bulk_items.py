"""Items stored in bulk with ids drawn first (``store.upsert.allocate_ids``), on SQLite and
PostgreSQL: the answer's ids are the stored rows', in request order, never another writer's."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
from sqlalchemy import select

from labelloop.runtime import Runtime
from labelloop.schemas import ItemCreate
from labelloop.service import items as item_service
from labelloop.service.tasks import TaskCreate, create_task
from labelloop.store.models import Item
from labelloop.store.upsert import allocate_ids

NAMES = itertools.count(1)


def new_task(rt: Runtime) -> int:
    spec = TaskCreate(
        name=f"bulk{next(NAMES)}",
        category="text-classification",
        labels=["a", "b"],
        policy={"learner": "tfidf-svm", "learner_params": {"embeddings": False}},
    )
    return int(create_task(rt, spec)["id"])


def stored(rt: Runtime, task_id: int) -> dict[int, Item]:
    with rt.reading() as s:
        return {i.id: i for i in s.scalars(select(Item).where(Item.task_id == task_id))}


def test_a_request_answers_the_ids_of_its_rows_in_order(rt: Runtime) -> None:
    t = new_task(rt)
    first = item_service.add_items(rt, t, [ItemCreate(data="old text", external_id="e1")])
    old_id = first["items"][0]["id"]
    # An item written by the ORM (its key from the database) between two bulk requests.
    with rt.session() as s:
        orm_item = Item(task_id=t, data="by the orm", status="ready")
        s.add(orm_item)
        s.flush()
        orm_id = orm_item.id
    specs = [
        ItemCreate(data="text one", external_id="e0"),
        ItemCreate(data="old text again", external_id="e1"),  # known: not added
        ItemCreate(data="text two"),
        ItemCreate(data="text three", external_id="e3"),
    ]
    answer = item_service.add_items(rt, t, specs)
    assert (answer["created"], answer["existing"]) == (3, 1)
    assert [(row["external_id"], row["created"]) for row in answer["items"]] == [
        ("e1", False),
        ("e0", True),
        (None, True),
        ("e3", True),
    ]
    assert answer["items"][0]["id"] == old_id
    new_ids = [row["id"] for row in answer["items"] if row["created"]]
    assert new_ids == sorted(new_ids) and min(new_ids) > max(old_id, orm_id)
    rows = stored(rt, t)
    assert len(rows) == 5
    for row, spec in zip(answer["items"][1:], [specs[0], specs[2], specs[3]], strict=True):
        item = rows[row["id"]]
        assert (item.data, item.external_id, item.status) == (spec.data, spec.external_id, "ready")
        assert item.signature is not None and len(item.signature) == 32
        assert item.content_hash is not None and item.created_at is not None
    # The ORM's next key is past the drawn ones (PostgreSQL's sequence moved with them).
    with rt.session() as s:
        after = Item(task_id=t, data="by the orm again", status="ready")
        s.add(after)
        s.flush()
        assert after.id > max(new_ids)


def test_requests_at_the_same_time_never_share_an_id(rt: Runtime) -> None:
    t = new_task(rt)
    start = threading.Barrier(3)
    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def request(n: int) -> None:
        specs = [ItemCreate(data=f"writer {n} text {i}") for i in range(1_500)]
        start.wait()
        try:
            answers.append(item_service.add_items(rt, t, specs))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    ids = [row["id"] for answer in answers for row in answer["items"]]
    assert len(ids) == len(set(ids)) == 4_500
    rows = stored(rt, t)
    assert set(rows) == set(ids)
    for answer in answers:  # each answer's ids are its own texts
        texts = [rows[row["id"]].data for row in answer["items"]]
        writer = texts[0].split()[1]
        assert texts == [f"writer {writer} text {i}" for i in range(1_500)]


def test_a_unique_key_clash_rolls_the_request_back_and_its_retry_stores_it_once(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when another writer stores one of the request's new external ids first: the bulk insert
    fails on the unique key, nothing of the request stays, and the retry stores every item once."""
    t = new_task(rt)
    clashes: list[int] = []

    def clashing(s: Any, table: Any, n: int) -> list[int]:
        if not clashes:  # the first attempt only: the same key is taken in its transaction
            s.add(Item(task_id=t, data="first writer", external_id="x1", status="ready"))
            s.flush()
            clashes.append(n)
        return allocate_ids(s, table, n)

    monkeypatch.setattr(item_service, "allocate_ids", clashing)
    specs = [ItemCreate(data=f"text {i}", external_id=f"x{i}") for i in range(3)]
    answer = item_service.add_items(rt, t, specs)
    assert clashes == [3]
    assert answer["created"] == 3 and answer["existing"] == 0
    rows = stored(rt, t)
    assert sorted(i.external_id or "" for i in rows.values()) == ["x0", "x1", "x2"]
    assert {rows[row["id"]].data for row in answer["items"]} == {"text 0", "text 1", "text 2"}
