"""Text spans through the API: the task, the annotation body's ``spans``, their checks (422
naming the problem), the item's history, the export. The model in the loop: test_span_loop."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

TEXTS = ["Ada Lovelace met Charles Babbage in London.", "Nothing to see here."]
ADA = {"start": 0, "end": 12, "label": "PER"}
LONDON = {"start": 36, "end": 42, "label": "LOC"}


def _task(c: TestClient) -> tuple[int, list[int]]:
    r = c.post(
        "/api/v1/tasks", json={"name": "ner", "category": "text-spans", "labels": ["PER", "LOC"]}
    )
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["kind"] == {
        "name": "text-spans",
        "value_field": "spans",
        "media": "text",
        "widget": "spans",
    }
    r = c.post(
        f"/api/v1/tasks/{task['id']}/items",
        json={"items": [{"data": t, "external_id": f"t{i}"} for i, t in enumerate(TEXTS)]},
    )
    assert r.status_code in (200, 201), r.text
    return task["id"], [it["id"] for it in r.json()["items"]]


def _annotate(c: TestClient, task_id: int, *annotations: dict[str, object]):  # type: ignore[no-untyped-def]
    return c.post(f"/api/v1/tasks/{task_id}/annotations", json={"annotations": list(annotations)})


def test_spans_are_checked_stored_and_exported(app_client: TestClient) -> None:
    c = app_client
    task_id, (first, second) = _task(c)
    r = _annotate(
        c,
        task_id,
        {"item_id": first, "spans": [LONDON, ADA], "annotator": "ann"},
        {"external_id": "t1", "spans": []},  # no entity here: an answer too
    )
    assert r.status_code == 201, r.text
    assert [a["edited"] for a in r.json()["annotations"]] == [True, True]  # nothing was shown
    assert r.json()["training_triggered"] is False

    item = c.get(f"/api/v1/tasks/{task_id}/items/{first}").json()
    assert item["labels"] == [ADA, LONDON]  # stored in order of position
    assert item["annotations"][-1]["labels"] == [ADA, LONDON]
    assert c.get(f"/api/v1/tasks/{task_id}/items/{second}").json()["labels"] == []

    rows = [json.loads(line) for line in c.get(f"/api/v1/tasks/{task_id}/export").text.splitlines()]
    assert [row["spans"] for row in rows] == [[ADA, LONDON], []]
    assert "labels" not in rows[0]
    csv = c.get(f"/api/v1/tasks/{task_id}/export?format=csv").text.splitlines()
    assert csv[0].split(",")[4] == "spans"
    assert "0:12:PER|36:42:LOC" in csv[1]

    conll = c.get(f"/api/v1/tasks/{task_id}/export?format=conll").text
    assert conll.startswith("Ada\tB-PER\nLovelace\tI-PER\nmet\tO\n")
    assert conll.endswith("Nothing\tO\nto\tO\nsee\tO\nhere\tO\n.\tO\n\n")

    pred = c.get(f"/api/v1/tasks/{task_id}/predictions", params={"item_id": first}).json()
    assert (pred["status"], pred["spans"], pred["model_version"]) == ("no_model", None, None)


def test_bad_spans_get_a_422_naming_the_problem(app_client: TestClient) -> None:
    c = app_client
    task_id, (first, _) = _task(c)
    cases = [
        ([{"start": 36, "end": 44, "label": "LOC"}], "span 36-44: ends after the text"),
        ([ADA, {"start": 4, "end": 16, "label": "LOC"}], "span 4-16: overlaps span 0-12"),
        ([{"start": 0, "end": 3, "label": "ORG"}], 'unknown label "ORG"'),
        ([{"start": 7, "end": 3, "label": "PER"}], "start < end"),
        ([{"start": -1, "end": 3, "label": "PER"}], "start"),
        ([{"start": 0, "end": 3}], "label"),
    ]
    for spans, fragment in cases:
        r = _annotate(c, task_id, {"item_id": first, "spans": spans})
        assert r.status_code == 422, (spans, r.text)
        assert fragment in r.json()["detail"], (spans, r.json())
    r = _annotate(c, task_id, {"item_id": first, "labels": ["PER"]})
    assert r.status_code == 422 and "this task takes spans, not labels" in r.json()["detail"]
    r = _annotate(c, task_id, {"item_id": first})
    assert r.status_code == 422 and "exactly one of labels and spans" in r.json()["detail"]
    # Nothing was stored by the refused requests.
    assert c.get(f"/api/v1/tasks/{task_id}/items/{first}").json()["annotations"] == []


def test_a_classification_task_takes_labels_not_spans(app_client: TestClient) -> None:
    c = app_client
    r = c.post(
        "/api/v1/tasks",
        json={"name": "t", "category": "text-classification", "labels": ["pos", "neg"]},
    )
    task = r.json()
    assert task["kind"]["widget"] == "choice" and task["kind"]["value_field"] == "labels"
    items = c.post(f"/api/v1/tasks/{task['id']}/items", json={"items": [{"data": "fine"}]}).json()
    r = _annotate(c, task["id"], {"item_id": items["items"][0]["id"], "spans": [ADA]})
    assert r.status_code == 422 and "this task takes labels, not spans" in r.json()["detail"]
    r = c.get(f"/api/v1/tasks/{task['id']}/export?format=conll")
    assert r.status_code == 422 and "conll format is for text-spans" in r.json()["detail"]
