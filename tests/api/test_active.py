"""Active ordering, auto-labelling at a target accuracy and label-error flags, through HTTP."""

from __future__ import annotations

import json
import random

from fastapi.testclient import TestClient

from tests.support import wait_until

LABELS = [str(d) for d in range(10)]


def create(c: TestClient, policy: dict[str, object]) -> int:
    r = c.post(
        "/api/v1/tasks",
        json={"name": "d", "category": "image-classification", "labels": LABELS, "policy": policy},
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def idle(c: TestClient, t: int) -> bool:
    return not c.get(f"/api/v1/tasks/{t}").json()["training"]


def label(
    c: TestClient, t: int, item_id: int, labels: list[str], shown: int | None
) -> dict[str, object]:
    a: dict[str, object] = {"item_id": item_id, "labels": labels, "annotator": "ann"}
    a.update({"shown_none": True} if shown is None else {"shown_version": shown})
    r = c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": [a]})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_auto_labelling_never_overwrites_people(
    app_client: TestClient, digit_files: list[tuple[str, str]]
) -> None:
    c = app_client
    policy = {
        "min_labels": 10,
        "auto_label": {"target_accuracy": 0.9, "confidence": 0.99, "min_labels": 20},
    }
    t = create(c, policy)
    items = c.post(
        f"/api/v1/tasks/{t}/items",
        json={
            "items": [{"data": p, "external_id": str(i)} for i, (p, _) in enumerate(digit_files)]
        },
    ).json()["items"]
    truth = {it["id"]: digit_files[i][1] for i, it in enumerate(items)}
    wait_until(lambda: c.get(f"/api/v1/tasks/{t}").json()["counts"]["pending"] == 0)

    humans: set[int] = set()
    while len(humans) < 150:
        batch = c.get(f"/api/v1/tasks/{t}/next", params={"limit": 1}).json()["items"]
        if not batch:
            break
        item = batch[0]
        assert item["id"] not in humans  # /next never offers what a person labelled
        humans.add(item["id"])
        if label(c, t, item["id"], [truth[item["id"]]], item["prediction"]["model_version"])[
            "training_triggered"
        ]:
            wait_until(lambda: idle(c, t))
    task = c.get(f"/api/v1/tasks/{t}").json()
    auto = task["auto_label"]
    assert auto["threshold"] is not None, auto
    assert auto["accuracy_lower_bound"] >= 0.9 and auto["heldout_labels"] >= 20
    counts = task["counts"]
    assert counts["model_labelled"] > 0
    assert (
        counts["human_labelled"] + counts["model_labelled"] + counts["unlabelled"]
        == counts["items"]
    )

    rows = [json.loads(line) for line in c.get(f"/api/v1/tasks/{t}/export").text.splitlines()]
    model_rows = [r for r in rows if r["source"] == "model"]
    assert len(model_rows) == counts["model_labelled"]
    assert all(r["item_id"] not in humans for r in model_rows)
    assert all(
        r["model_version"] is not None and r["score"] >= auto["threshold"] for r in model_rows
    )
    assert all(r["source"] == "human" for r in rows if r["item_id"] in humans)
    right = sum(r["labels"] == [truth[r["item_id"]]] for r in model_rows)
    # The claim (90% at 99% confidence) misses by five points on ~250 labels in well under 1% of
    # runs; at 90% confidence a claim resting on ~25 audits missed this bar about one run in ten.
    assert right >= 0.85 * len(model_rows)
    # /next offers neither human- nor model-labelled items.
    offered = {
        i["id"] for i in c.get(f"/api/v1/tasks/{t}/next", params={"limit": 50}).json()["items"]
    }
    assert not offered & (humans | {r["item_id"] for r in model_rows})

    # A person corrects a model label: the human label wins, now and after the next promotion.
    target = model_rows[0]["item_id"]
    other = next(lbl for lbl in LABELS if [lbl] != model_rows[0]["labels"])
    label(c, t, target, [other], task["served_version"])
    c.post(f"/api/v1/tasks/{t}/train")
    wait_until(lambda: idle(c, t))
    item = c.get(f"/api/v1/tasks/{t}/items/{target}").json()
    assert item["labels"] == [other] and item["label_source"] == "human"
    sources = [a["source"] for a in item["annotations"]]
    assert sources[-1] == "human" and "model" in sources[:-1]  # nothing model-made after it
    rows = {
        json.loads(line)["item_id"]: json.loads(line)
        for line in c.get(f"/api/v1/tasks/{t}/export").text.splitlines()
    }
    assert rows[target]["source"] == "human" and rows[target]["labels"] == [other]


def test_a_batch_is_not_near_copies(
    app_client: TestClient, digit_files: list[tuple[str, str]]
) -> None:
    c = app_client
    t = create(c, {"min_labels": 10})
    copies = [{"data": digit_files[0][0], "external_id": f"copy{i}"} for i in range(20)]
    others = [{"data": p, "external_id": f"other{i}"} for i, (p, _) in enumerate(digit_files[1:6])]
    c.post(f"/api/v1/tasks/{t}/items", json={"items": copies + others})
    wait_until(lambda: c.get(f"/api/v1/tasks/{t}").json()["counts"]["pending"] == 0)
    batch = c.get(f"/api/v1/tasks/{t}/next", params={"limit": 5}).json()["items"]
    assert len(batch) == 5
    assert sum(it["external_id"].startswith("copy") for it in batch) <= 1


def test_suspects_find_planted_errors(
    app_client: TestClient, digit_files: list[tuple[str, str]]
) -> None:
    c = app_client
    t = create(c, {"min_labels": 10})
    items = c.post(
        f"/api/v1/tasks/{t}/items", json={"items": [{"data": p} for p, _ in digit_files]}
    ).json()["items"]
    rng = random.Random(3)
    planted: set[int] = set()
    annotations = []
    for it, (_, truth) in zip(items, digit_files, strict=True):
        given = truth
        if rng.random() < 0.05:
            given = rng.choice([lbl for lbl in LABELS if lbl != truth])
            planted.add(it["id"])
        annotator = "ann" if it["id"] % 2 else "bob"
        annotations.append({"item_id": it["id"], "labels": [given], "annotator": annotator})
    # One request: the flags come from the model trained on all of them, not from the trainings
    # that labels sent one at a time would start on the way.
    r = c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": annotations})
    assert r.status_code == 201, r.text
    c.post(f"/api/v1/tasks/{t}/train")
    wait_until(lambda: idle(c, t))
    out = c.get(f"/api/v1/tasks/{t}/suspects", params={"limit": 1000}).json()
    flagged = {s["item_id"] for s in out["suspects"]}
    assert out["checked"] == len(items)
    hits = flagged & planted
    assert len(hits) >= 0.6 * len(planted) and len(hits) >= 0.6 * len(flagged), (
        len(hits),
        len(planted),
        len(flagged),
    )
    first = out["suspects"][0]
    assert set(first) >= {"item_id", "given", "suggested", "score", "data", "annotators"}
    assert first["given"] != first["suggested"]
    scores = [s["score"] for s in out["suspects"]]
    assert scores == sorted(scores, reverse=True)


def test_audits_are_random_picks_recorded_as_evidence(
    app_client: TestClient, digit_files: list[tuple[str, str]]
) -> None:
    from labelloop.loop.policy import AutoLabelPolicy
    from labelloop.loop.selection import audit_turn_at as _audit_turn

    assert [_audit_turn(k, 2 / 3) for k in range(6)] == [False, True, True, False, True, True]
    assert not any(_audit_turn(k, 0.0) for k in range(10))

    c = app_client
    t = create(c, {"min_labels": 10, "auto_label": {"target_accuracy": 0.9}})
    items = c.post(
        f"/api/v1/tasks/{t}/items", json={"items": [{"data": p} for p, _ in digit_files[:120]]}
    ).json()["items"]
    truth = {it["id"]: digit_files[i][1] for i, it in enumerate(items)}
    wait_until(lambda: c.get(f"/api/v1/tasks/{t}").json()["counts"]["pending"] == 0)
    # Before the first model every item handed out is a random pick.
    first = c.get(f"/api/v1/tasks/{t}/next", params={"limit": 10}).json()["items"]
    assert all(it["audit"] for it in first)
    for it in first:
        label(c, t, it["id"], [truth[it["id"]]], None)
    wait_until(lambda: idle(c, t))
    batch = c.get(f"/api/v1/tasks/{t}/next", params={"limit": 3}).json()["items"]
    share = AutoLabelPolicy().audit_share  # the default share
    assert [it["audit"] for it in batch] == [_audit_turn(10 + k, share) for k in range(3)]
    from labelloop.store.models import AuditPick

    rt = c.app.state.rt  # type: ignore[attr-defined]
    with rt.session() as s:
        picked = {a.item_id for a in s.query(AuditPick).filter(AuditPick.task_id == t)}
    assert {it["id"] for it in first} | {it["id"] for it in batch if it["audit"]} == picked
