"""The item browser's list (filters by label source, label, suspect flag, annotator, status; pages)
and the task's progress (labelled, left, rate, time left), through HTTP."""

from __future__ import annotations

import random
from typing import Any

from fastapi.testclient import TestClient

from tests.support import wait_until

TOPICS = {
    "sport": "football goal match team referee league striker score stadium",
    "food": "pasta recipe oven garlic tomato flavour dinner bread butter",
    "music": "guitar concert melody song drummer chorus album piano band",
}


def page(c: TestClient, t: int, **params: Any) -> dict[str, Any]:
    r = c.get(f"/api/v1/tasks/{t}/items", params=params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def ids(c: TestClient, t: int, **params: Any) -> set[int]:
    return {it["id"] for it in page(c, t, limit=500, **params)["items"]}


def test_the_item_list_filters_and_pages(app_client: TestClient, image_root: Any) -> None:
    c = app_client
    rng = random.Random(7)
    labels = list(TOPICS)
    texts = [" ".join(rng.sample(TOPICS[labels[n % 3]].split(), 5)) for n in range(45)]
    truth = [labels[n % 3] for n in range(45)]
    t = c.post(
        "/api/v1/tasks",
        json={
            "name": "topics",
            "category": "text-classification",
            "labels": labels,
            "policy": {"min_labels": 30, "cv_folds": 3, "seed": 2},
        },
    ).json()["id"]
    added = c.post(f"/api/v1/tasks/{t}/items", json={"items": [{"data": x} for x in texts]})
    item_ids = [it["id"] for it in added.json()["items"]]
    wrong = item_ids[0]  # a "sport" text labelled "music": a label error to flag
    annotations = [
        {
            "item_id": i,
            "labels": ["music" if i == wrong else truth[n]],
            "annotator": "Ada" if n % 2 else "Bob",
        }
        for n, i in enumerate(item_ids[:30])
    ]
    assert (
        c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": annotations}).status_code
        == 201
    )
    wait_until(lambda: c.get(f"/api/v1/tasks/{t}").json()["served_version"] == 0)
    wait_until(lambda: not c.get(f"/api/v1/tasks/{t}").json()["training"])

    first = page(c, t, limit=10)
    assert first["total"] == 45 and first["offset"] == 0 and len(first["items"]) == 10
    assert [it["id"] for it in first["items"]] == item_ids[:10]
    last = page(c, t, limit=10, offset=40)
    assert [it["id"] for it in last["items"]] == item_ids[40:]

    assert ids(c, t, source="human") == set(item_ids[:30])
    assert ids(c, t, source="none") == set(item_ids[30:])
    assert ids(c, t, source="model") == set()
    assert ids(c, t, label="music") == {
        i for n, i in enumerate(item_ids[:30]) if truth[n] == "music"
    } | {wrong}
    assert ids(c, t, annotator="Ada") == set(item_ids[1:30:2])
    assert ids(c, t, annotator="Ada", label="food") == {
        i for n, i in enumerate(item_ids[:30]) if n % 2 and truth[n] == "food"
    }
    flagged = ids(c, t, suspect="true")
    assert wrong in flagged
    assert ids(c, t, suspect="false") == set(item_ids) - flagged
    row = next(it for it in page(c, t, limit=1)["items"])
    assert row["suspect"] is True and row["labels"] == ["music"] and row["annotators"] == ["Bob"]
    assert row["label_source"] == "human" and row["preview"] == texts[0]
    suspects = c.get(f"/api/v1/tasks/{t}/suspects").json()["suspects"]
    assert wrong in {s["item_id"] for s in suspects}

    # A correction from the browser is appended; the list follows the newest label.
    fix = {"item_id": wrong, "labels": ["sport"], "annotator": "Cleo"}
    assert c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": [fix]}).status_code == 201
    assert wrong in ids(c, t, label="sport") and wrong not in ids(c, t, label="music")
    assert wrong in ids(c, t, annotator="Cleo")

    # Unreadable items say which file and why.
    img = c.post(
        "/api/v1/tasks",
        json={"name": "images", "category": "image-classification", "labels": ["x", "y"]},
    ).json()["id"]
    broken = image_root / "broken.png"
    broken.write_bytes(b"not an image")
    c.post(f"/api/v1/tasks/{img}/items", json={"items": [{"data": str(broken)}]})
    wait_until(lambda: page(c, img, status="failed")["total"] == 1)
    (bad,) = page(c, img, status="failed")["items"]
    assert bad["preview"] == str(broken) and bad["error"]
    assert page(c, img, status="ready")["total"] == 0

    r = c.get(f"/api/v1/tasks/{t}/items", params={"source": "people"})
    assert r.status_code == 422 and "source" in r.json()["detail"]
    assert c.get("/api/v1/tasks/9999/items").status_code == 404


def test_progress_per_task_and_annotator(app_client: TestClient) -> None:
    c = app_client
    t = c.post(
        "/api/v1/tasks",
        json={
            "name": "p",
            "category": "text-classification",
            "labels": ["a", "b"],
            "policy": {"min_labels": 1000},
        },
    ).json()["id"]
    item_ids = [
        it["id"]
        for it in c.post(
            f"/api/v1/tasks/{t}/items", json={"items": [{"data": f"t{n}"} for n in range(10)]}
        ).json()["items"]
    ]
    empty = c.get(f"/api/v1/tasks/{t}/progress").json()
    assert empty["left"] == 10 and empty["rate_per_hour"] is None and empty["eta_seconds"] is None
    for n, i in enumerate(item_ids[:4]):
        a = {"item_id": i, "labels": ["a"], "annotator": "Ada" if n < 3 else None}
        c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": [a]})
    correction = {"item_id": item_ids[0], "labels": ["b"], "annotator": "Ada"}
    c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": [correction]})
    p = c.get(f"/api/v1/tasks/{t}/progress").json()
    assert (p["items"], p["done"], p["left"], p["labels_needed"]) == (10, 4, 6, 6)
    assert p["human_labels"] == 5
    # Five labels within a minute: a rate of at least 5 an hour (measured over a minute or more).
    assert 0 < p["rate_per_hour"] <= 5 * 60
    assert p["eta_seconds"] == round(6 / p["rate_per_hour"] * 3600, 1)
    by = {a["annotator"]: a for a in p["annotators"]}
    assert by["Ada"]["labels"] == 4 and by["Ada"]["items"] == 3 and by["Ada"]["recent_labels"] == 4
    assert by[None]["labels"] == 1 and by["Ada"]["last_label_at"] is not None
