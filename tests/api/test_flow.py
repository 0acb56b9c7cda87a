"""The assist loop end to end through HTTP, on SQLite and on PostgreSQL:
task -> items -> labels -> first model -> pre-labels -> more labels -> promotion -> rollback."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from tests.support import wait_until

LABELS = [str(d) for d in range(10)]


def make_task(client: TestClient, **policy: object) -> int:
    body: dict[str, object] = {
        "name": "digits",
        "category": "image-classification",
        "labels": LABELS,
    }
    if policy:
        body["policy"] = policy
    r = client.post("/api/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def training_done(client: TestClient, task_id: int) -> bool:
    return not client.get(f"/api/v1/tasks/{task_id}").json()["training"]


def label(client: TestClient, task_id: int, item_id: int, truth: str) -> dict[str, object]:
    r = client.post(
        f"/api/v1/tasks/{task_id}/annotations",
        json={"annotations": [{"item_id": item_id, "labels": [truth], "annotator": "ann"}]},
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_whole_loop(app_client: TestClient, digit_files: list[tuple[str, str]]) -> None:
    c = app_client
    task_id = make_task(c, min_labels=10)
    assert c.get(f"/api/v1/tasks/{task_id}").json()["served_version"] is None

    r = c.post(
        f"/api/v1/tasks/{task_id}/items",
        json={
            "items": [{"data": p, "external_id": f"e{i}"} for i, (p, _) in enumerate(digit_files)]
        },
    )
    assert r.status_code == 201 and r.json()["created"] == len(digit_files)
    items = r.json()["items"]
    truth = {it["id"]: digit_files[i][1] for i, it in enumerate(items)}

    # Re-adding the same external ids adds nothing.
    again = c.post(
        f"/api/v1/tasks/{task_id}/items",
        json={"items": [{"data": digit_files[0][0], "external_id": "e0"}]},
    )
    assert again.json() == {
        "created": 0,
        "existing": 1,
        "items": [{"id": items[0]["id"], "external_id": "e0", "created": False}],
    }

    # Before the first model: an explicit "no model yet", not an error.
    first = items[0]["id"]
    pred = c.get(f"/api/v1/tasks/{task_id}/predictions", params={"item_id": first}).json()
    assert pred["status"] == "no_model" and pred["model_version"] is None
    assert (
        c.post(
            f"/api/v1/tasks/{task_id}/predict", json={"items": [{"data": digit_files[0][0]}]}
        ).json()["status"]
        == "no_model"
    )

    # Label a class-balanced first batch: the 10th label starts the first training job.
    by_class: dict[str, int] = {}
    for it in items:
        by_class.setdefault(truth[it["id"]], it["id"])
    seeds = list(by_class.values())
    for n, item_id in enumerate(seeds, start=1):
        answer = label(c, task_id, item_id, truth[item_id])
        assert answer["training_triggered"] is (n == 10)
        assert answer["annotations"][0]["edited"] is True  # labelled from scratch
    wait_until(lambda: training_done(c, task_id))
    task = c.get(f"/api/v1/tasks/{task_id}").json()
    assert task["served_version"] == 0
    assert task["counts"]["human_labelled"] == 10

    # Pre-labels now come from model-time0, with scores over every label.
    rest = [it["id"] for it in items if it["id"] not in seeds]
    pred = c.get(f"/api/v1/tasks/{task_id}/predictions", params={"item_id": rest[0]}).json()
    assert pred["status"] == "ok" and pred["model_version"] == 0
    assert set(pred["scores"]) == set(LABELS) and pred["labels"][0] in LABELS

    # More labels: retraining on growth, promotions, edit rate measured against what was shown.
    for item_id in rest[:60]:
        answer = label(c, task_id, item_id, truth[item_id])
        if answer["training_triggered"]:
            wait_until(lambda: training_done(c, task_id))
    versions = c.get(f"/api/v1/tasks/{task_id}/models").json()
    assert len(versions) >= 5
    served = [v for v in versions if v["serving"]]
    assert len(served) == 1 and served[0]["version"] > 0
    assert all(
        v["status"] in ("ready", "pruned") and "cv_accuracy" in v["metrics"] for v in versions
    )
    # Retention: the served version, the newest LABELLOOP_KEEP_VERSIONS (5) and the best stay.
    kept = [v for v in versions if v["status"] == "ready"]
    assert served[0] in kept and len(kept) <= 5 + 2
    assert len(versions) <= 7 or any(v["status"] == "pruned" for v in versions)

    metrics = c.get(f"/api/v1/tasks/{task_id}/metrics").json()
    assert metrics["edit_rate"]["submitted"] == 70
    assert 0.0 < metrics["edit_rate"]["overall"] < 0.5  # the model does take over
    best = max(v["heldout_accuracy"] for v in metrics["versions"])
    assert best > 0.8

    # The served model's pre-labels are mostly right on items nobody labelled.
    nxt = c.get(f"/api/v1/tasks/{task_id}/next", params={"limit": 20}).json()
    assert len(nxt["items"]) == 20 and nxt["model_version"] == served[0]["version"]
    assert all(it["prediction"]["model_version"] == served[0]["version"] for it in nxt["items"])
    sample = rest[100:140]
    right = 0
    for item_id in sample:
        p = c.get(f"/api/v1/tasks/{task_id}/predictions", params={"item_id": item_id}).json()
        right += p["labels"] == [truth[item_id]]
    assert right >= 0.7 * len(sample)

    # A pruned version cannot serve again; roll back to the oldest kept one, then forward again.
    pruned = [v["version"] for v in versions if v["status"] == "pruned"]
    if pruned:
        r = c.post(f"/api/v1/tasks/{task_id}/models/{pruned[0]}/promote")
        assert r.status_code == 409 and "pruned" in r.json()["detail"]
    oldest = min(v["version"] for v in kept)
    r = c.post(f"/api/v1/tasks/{task_id}/models/{oldest}/promote")
    assert r.status_code == 200 and r.json()["served_version"] == oldest
    pred = c.get(f"/api/v1/tasks/{task_id}/predictions", params={"item_id": rest[-1]}).json()
    assert pred["model_version"] == oldest
    r = c.post(f"/api/v1/tasks/{task_id}/models/{served[0]['version']}/promote")
    assert r.json()["served_version"] == served[0]["version"]

    # Predictions for data links that are not stored items.
    r = c.post(f"/api/v1/tasks/{task_id}/predict", json={"items": [{"data": digit_files[-1][0]}]})
    assert r.json()["model_version"] == served[0]["version"]
    assert r.json()["predictions"][0]["status"] == "ok"

    # Corrections are new revisions: the first label stays in the history.
    item = seeds[0]
    wrong = "9" if truth[item] != "9" else "8"
    label(c, task_id, item, wrong)
    wait_until(lambda: training_done(c, task_id))
    history = c.get(f"/api/v1/tasks/{task_id}/items/{item}").json()
    assert [a["labels"] for a in history["annotations"] if a["source"] == "human"] == [
        [truth[item]],
        [wrong],
    ]
    assert history["labels"] == [wrong]

    # Export: every item, labelled ones with source and annotator.
    lines = c.get(f"/api/v1/tasks/{task_id}/export", params={"format": "jsonl"}).text.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == len(items)
    labelled = [r for r in rows if r["labels"] is not None]
    assert len(labelled) == 70 and all(
        r["source"] == "human" and r["annotator"] == "ann" for r in labelled
    )
    csv_text = c.get(f"/api/v1/tasks/{task_id}/export", params={"format": "csv"}).text
    assert csv_text.splitlines()[0].startswith("item_id,external_id,data")
    assert len(csv_text.splitlines()) == len(items) + 1


def test_shown_version_measures_edits(
    app_client: TestClient, digit_files: list[tuple[str, str]]
) -> None:
    c = app_client
    task_id = make_task(c, min_labels=10)
    items = c.post(
        f"/api/v1/tasks/{task_id}/items", json={"items": [{"data": p} for p, _ in digit_files[:40]]}
    ).json()["items"]
    truth = {it["id"]: digit_files[i][1] for i, it in enumerate(items)}
    for it in items[:30]:
        if label(c, task_id, it["id"], truth[it["id"]])["training_triggered"]:
            wait_until(lambda: training_done(c, task_id))
    target = items[35]["id"]
    shown = c.get(f"/api/v1/tasks/{task_id}/predictions", params={"item_id": target}).json()
    other = next(lbl for lbl in LABELS if lbl not in shown["labels"])
    r = c.post(
        f"/api/v1/tasks/{task_id}/annotations",
        json={
            "annotations": [
                {
                    "item_id": target,
                    "labels": shown["labels"],
                    "shown_version": shown["model_version"],
                },
                {"item_id": items[36]["id"], "labels": [other], "shown_none": True},
            ]
        },
    )
    out = r.json()["annotations"]
    assert out[0]["edited"] is False and out[0]["shown_version"] == shown["model_version"]
    assert out[1]["edited"] is True and out[1]["shown_version"] is None
    bad = c.post(
        f"/api/v1/tasks/{task_id}/annotations",
        json={"annotations": [{"item_id": target, "labels": ["1"], "shown_version": 999}]},
    )
    assert bad.status_code == 422 and "999" in bad.json()["detail"]
