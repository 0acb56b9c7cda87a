"""Text spans with a model in the loop, through HTTP (embedded, jobs in process): 40 labelled
texts train a spaCy NER version, scored on entity F1 out of sample; its spans come back as
pre-labels (stored items, texts sent to ``/predict``, ``/next``, Label Studio's ``/predict``);
suspects are spans the out-of-sample model disagrees with; auto-labelling is refused."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from labelloop.kinds import kind_for
from labelloop.labelstudio import writer
from tests.span_support import LABELS, corpus
from tests.support import wait_until

CONFIG = (
    '<View><Labels name="ner" toName="text">'
    + "".join(f'<Label value="{label}"/>' for label in LABELS)
    + '</Labels><Text name="text" value="$text"/></View>'
)
PROJECT = "12.1764237600"


def _task_from_label_studio(c: TestClient, texts: list[str]) -> tuple[int, dict[int, int]]:
    """A text-spans task set up from a Label Studio project, its texts ingested by a first
    ``/predict`` (empty entries: no model yet); returns the task and Label Studio id -> item."""
    r = c.post("/labelstudio/setup", json={"project": PROJECT, "schema": CONFIG})
    assert r.status_code == 200, r.text
    task_id = int(r.json()["task_id"])
    r = c.patch(f"/api/v1/tasks/{task_id}", json={"policy": {"min_labels": 40, "cv_folds": 3}})
    assert r.status_code == 200, r.text
    r = c.post("/labelstudio/predict", json=_predict_body(range(len(texts)), texts))
    assert r.status_code == 200 and r.json()["results"] == [[]] * len(texts), r.text
    assert writer.flush(c.app.state.rt, 60)  # the tasks are stored just after the answer
    items = c.get(f"/api/v1/tasks/{task_id}/items", params={"limit": 500}).json()["items"]
    by_task = {it["external_id"]: it["id"] for it in items}
    return task_id, {n: by_task[f"ls:{500 + n}"] for n in range(len(texts))}


def _predict_body(ids: Any, texts: list[str]) -> dict[str, Any]:
    return {
        "tasks": [{"id": 500 + n, "data": {"text": texts[n]}, "project": 12} for n in ids],
        "project": PROJECT,
        "label_config": CONFIG,
    }


def _f1(predicted: list[list[dict[str, Any]]], given: list[list[dict[str, Any]]]) -> float:
    kind = kind_for("text-spans")
    answers = np.empty(len(predicted), dtype=object)
    for i, spans in enumerate(predicted):
        answers[i] = {"spans": spans, "certainty": 1.0}
    return kind.score(answers, kind.encode(given, LABELS)).macro_f1


def test_a_span_task_learns_in_the_loop_and_serves_span_prelabels(app_client: TestClient) -> None:
    c = app_client
    data = corpus(60, seed=1)
    texts = [t for t, _ in data]
    task_id, items = _task_from_label_studio(c, texts)

    for n in range(40):
        r = c.post(
            f"/api/v1/tasks/{task_id}/annotations",
            json={"annotations": [{"item_id": items[n], "spans": data[n][1], "annotator": "a"}]},
        )
        assert r.status_code == 201, r.text
        assert r.json()["training_triggered"] is (n == 39)
    wait_until(
        lambda: not c.get(f"/api/v1/tasks/{task_id}").json()["training"], 180, "first training"
    )
    assert c.get(f"/api/v1/tasks/{task_id}").json()["served_version"] == 0

    # The version is scored on entity precision, recall and F1 out of sample.
    version = c.get(f"/api/v1/tasks/{task_id}/metrics").json()["versions"][0]
    assert version["n_labels"] == 40 and version["heldout_entity_f1"] is not None
    assert version["heldout_macro_f1"] == version["heldout_entity_f1"]
    assert 0.0 <= version["heldout_entity_precision"] <= 1.0
    model = c.get(f"/api/v1/tasks/{task_id}/models").json()[0]
    assert model["learner"] == "spacy-ner" and "cv_entity_recall" in model["metrics"]
    assert 1 <= model["metrics"]["epochs_run"] <= 10

    # Stored items: span pre-labels with a score each, from version 0, inside their text.
    preds, certainty = [], []
    for n in range(40, 60):
        p = c.get(f"/api/v1/tasks/{task_id}/predictions", params={"item_id": items[n]}).json()
        certainty.append(p["score"])
        assert (p["status"], p["model_version"]) == ("ok", 0), p
        assert "labels" not in p and 0.0 <= p["score"] <= 1.0
        for span in p["spans"]:
            assert set(span) == {"start", "end", "label", "score"} and span["label"] in LABELS
            assert 0 <= span["start"] < span["end"] <= len(texts[n])
            assert 0.0 <= span["score"] <= 1.0
        preds.append([{k: s[k] for k in ("start", "end", "label")} for s in p["spans"]])
    assert _f1(preds, [spans for _, spans in data[40:]]) >= 0.5

    # Texts that are not stored, and the next items to label.
    text = "Alice works at Acme in Paris."
    r = c.post(f"/api/v1/tasks/{task_id}/predict", json={"items": [{"data": text}]}).json()
    assert r["model_version"] == 0 and r["predictions"][0]["status"] == "ok"
    assert all(text[s["start"] : s["end"]] for s in r["predictions"][0]["spans"])
    nxt = c.get(f"/api/v1/tasks/{task_id}/next", params={"limit": 3}).json()
    assert nxt["items"] and all(
        it["prediction"]["model_version"] == 0 and isinstance(it["prediction"]["spans"], list)
        for it in nxt["items"]
    )
    # Active ordering: the text whose weakest token is least certain comes first (below one half
    # every text is as unsure as can be).
    first = nxt["items"][0]["prediction"]["score"]
    assert max(first, 0.5) == max(min(certainty), 0.5)

    # Label Studio's /predict: "labels" results with the text they cover, and scores.
    r = c.post("/labelstudio/predict", json=_predict_body(range(40, 60), texts))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert all(entry["model_version"] for entry in results)
    shown = [res for entry in results for res in entry["result"]]
    assert shown, "the model proposes no span on 20 texts full of names"
    for n, entry in zip(range(40, 60), results, strict=True):
        for res in entry["result"]:
            value = res["value"]
            assert (res["type"], res["from_name"], res["to_name"]) == ("labels", "ner", "text")
            assert value["text"] == texts[n][value["start"] : value["end"]]
            assert value["labels"][0] in LABELS and 0.0 <= res["score"] <= 1.0

    # Suspects are read from the version's out-of-sample spans (none here: the labels are true).
    r = c.get(f"/api/v1/tasks/{task_id}/suspects")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 0 and r.json()["checked"] == 40


def test_auto_labelling_is_refused_for_spans_with_the_reason(app_client: TestClient) -> None:
    r = app_client.post(
        "/api/v1/tasks",
        json={
            "name": "ner-auto",
            "category": "text-spans",
            "labels": LABELS,
            "policy": {"auto_label": {"target_accuracy": 0.95}},
        },
    )
    assert r.status_code == 422
    assert "auto-labelling is off for text-spans tasks" in r.json()["detail"]


def test_span_learner_parameters_are_checked_at_creation(app_client: TestClient) -> None:
    r = app_client.post(
        "/api/v1/tasks",
        json={
            "name": "ner-beam",
            "category": "text-spans",
            "labels": LABELS,
            "policy": {"learner_params": {"beam_width": 1}},
        },
    )
    assert r.status_code == 422 and "beam_width" in r.json()["detail"]
