"""A text project's ``/predict`` answers from the request and stores its tasks after (the
write-behind): annotations find their items whether it has written yet or not, a task sent twice
is one item, and a write that fails loses no annotation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from labelloop.errors import Unavailable
from labelloop.labelstudio import backend, writer
from labelloop.runtime import Runtime
from labelloop.store.models import Item, Prediction
from tests.support import wait_until

PROJECT = "9.1764237600"
CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="mood" toName="text">
    <Choice value="good"/><Choice value="bad"/>
  </Choices>
</View>"""
GOOD = ["great lovely day", "good fine work", "lovely great food", "fine good show", "great job"]
BAD = ["awful poor day", "bad terrible work", "poor awful food", "terrible bad show", "awful job"]


def ls_task(tid: int, text: str) -> dict[str, Any]:
    return {"id": tid, "data": {"text": text}, "meta": {}, "project": 9}


def predict(c: TestClient, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    r = c.post(
        "/labelstudio/predict",
        json={"tasks": tasks, "project": PROJECT, "label_config": CONFIG, "params": {}},
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def annotate(c: TestClient, annotation_id: int, task: dict[str, Any], choice: str) -> Any:
    result = [
        {
            "id": f"r{annotation_id}",
            "from_name": "mood",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": [choice]},
        }
    ]
    r = c.post(
        "/labelstudio/webhook",
        json={
            "action": "ANNOTATION_CREATED",
            "annotation": {"id": annotation_id, "result": result, "task": task["id"]},
            "task": task,
            "project": {"id": 9, "label_config": CONFIG},
        },
    )
    assert r.status_code == 200, r.text
    return r.json()


def items_of(rt: Runtime, task_id: int, tid: int) -> list[int]:
    with rt.reading() as s:
        return list(
            s.scalars(
                select(Item.id).where(Item.task_id == task_id, Item.external_id == f"ls:{tid}")
            )
        )


@pytest.fixture
def served(app_client: TestClient, rt: Runtime) -> Iterator[tuple[TestClient, Runtime, int]]:
    """A connected text project (no sentence embeddings: the fast configuration) with a model
    that the tests' few annotations do not retrain."""
    c = app_client
    r = c.post("/labelstudio/setup", json={"project": PROJECT, "schema": CONFIG})
    task_id = r.json()["task_id"]
    r = c.patch(
        f"/api/v1/tasks/{task_id}",
        json={"policy": {"learner_params": {"embeddings": False}, "growth": 10.0}},
    )
    assert r.status_code == 200, r.text
    labelled = [
        {
            **ls_task(n + 1, text),
            "annotations": [
                {
                    "id": n + 1,
                    "result": [
                        {
                            "from_name": "mood",
                            "to_name": "text",
                            "type": "choices",
                            "value": {"choices": [label]},
                        }
                    ],
                }
            ],
        }
        for n, (text, label) in enumerate([(t, "good") for t in GOOD] + [(t, "bad") for t in BAD])
    ]
    r = c.post(
        "/labelstudio/train",
        json={"annotations": labelled, "project": PROJECT, "label_config": CONFIG},
    )
    assert r.status_code == 200, r.text
    wait_until(
        lambda: c.get(f"/api/v1/tasks/{task_id}").json()["served_version"] is not None,
        timeout=120,
        what="a first model",
    )
    yield c, rt, task_id


class Gate:
    """Holds the write-behind before it writes, until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.waiting = threading.Event()
        original = writer.WriteBehind._write

        def held(wb: writer.WriteBehind, entries: list[writer.Pending]) -> None:
            self.waiting.set()
            assert self.open.wait(60), "the test never opened the gate"
            original(wb, entries)

        monkeypatch.setattr(writer.WriteBehind, "_write", held)


def test_an_annotation_before_the_write_behind_wrote_finds_one_item(
    served: tuple[TestClient, Runtime, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, rt, task_id = served
    gate = Gate(monkeypatch)
    monkeypatch.setattr(backend, "FLUSH_WAIT_S", 0.0)  # the annotation does not wait for it
    tasks = [ls_task(100, "great lovely show"), ls_task(101, "awful terrible food")]
    body = predict(c, tasks)
    assert [r["result"][0]["value"]["choices"] for r in body["results"]] == [["good"], ["bad"]]
    assert gate.waiting.wait(30)
    assert items_of(rt, task_id, 100) == []  # answered before anything was stored

    answer = annotate(c, 900, tasks[0], "good")
    assert answer["status"] == "ok" and answer["n"] == 1
    (item,) = items_of(rt, task_id, 100)  # stored by the annotation itself
    gate.open.set()
    assert writer.flush(rt, 30)
    assert items_of(rt, task_id, 100) == [item]  # the write-behind found it: no second item
    (other,) = items_of(rt, task_id, 101)
    got = c.get(f"/api/v1/tasks/{task_id}/items/{item}").json()
    assert got["labels"] == ["good"]
    with rt.reading() as s:
        stored = s.get(Prediction, other)
        assert stored is not None and stored.labels == ["bad"]
        assert stored.version == c.get(f"/api/v1/tasks/{task_id}").json()["served_version"]


def test_an_annotation_after_the_write_behind_wrote_uses_its_item(
    served: tuple[TestClient, Runtime, int],
) -> None:
    c, rt, task_id = served
    task = ls_task(200, "good fine day")
    predict(c, [task])
    assert writer.flush(rt, 30)
    (item,) = items_of(rt, task_id, 200)
    # Label Studio may send the task without its data: it is found by its external id.
    answer = annotate(c, 901, {"id": 200}, "good")
    assert answer["n"] == 1
    assert items_of(rt, task_id, 200) == [item]
    assert c.get(f"/api/v1/tasks/{task_id}/items/{item}").json()["labels"] == ["good"]


def test_a_task_sent_again_is_one_item(
    served: tuple[TestClient, Runtime, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, rt, task_id = served
    gate = Gate(monkeypatch)
    task = ls_task(300, "poor bad day")
    # Twice in one request, and again in two more requests queued behind the same write.
    body = predict(c, [task, task])
    assert len(body["results"]) == 2 and body["results"][0] == body["results"][1]
    assert gate.waiting.wait(30)
    predict(c, [task])
    predict(c, [task, ls_task(301, "lovely fine food")])
    gate.open.set()
    assert writer.flush(rt, 30)
    predict(c, [task])  # and once more after it was written
    assert writer.flush(rt, 30)
    assert len(items_of(rt, task_id, 300)) == 1
    assert len(items_of(rt, task_id, 301)) == 1


def test_a_failing_write_loses_no_annotation(
    served: tuple[TestClient, Runtime, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, rt, task_id = served

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(writer, "store_in", broken)
    task = ls_task(400, "terrible awful show")
    predict(c, [task])
    assert writer.flush(rt, 30)  # given up on, and logged
    assert items_of(rt, task_id, 400) == []
    monkeypatch.undo()
    answer = annotate(c, 902, task, "bad")
    assert answer["n"] == 1
    (item,) = items_of(rt, task_id, 400)
    assert c.get(f"/api/v1/tasks/{task_id}/items/{item}").json()["labels"] == ["bad"]


def test_a_failed_predict_stores_nothing(
    served: tuple[TestClient, Runtime, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, rt, task_id = served

    def broken(*_: Any, **__: Any) -> Any:
        raise Unavailable("the inference workers do not answer")

    monkeypatch.setattr(rt.jobs, "predict_data", broken)
    with rt.reading() as s:
        before = s.scalar(select(func.count()).select_from(Item).where(Item.task_id == task_id))
    r = c.post(
        "/labelstudio/predict",
        json={"tasks": [ls_task(500, "good day")], "project": PROJECT, "label_config": CONFIG},
    )
    assert r.status_code == 503
    assert writer.flush(rt, 30)
    with rt.reading() as s:
        after = s.scalar(select(func.count()).select_from(Item).where(Item.task_id == task_id))
    assert after == before
