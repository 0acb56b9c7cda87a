"""Tasks are independent: two tasks over the same item links with different label sets, trained at
the same time, never see each other's labels, models or predictions; deleting one leaves the other."""

from __future__ import annotations

from fastapi.testclient import TestClient

from labelloop.runtime import Runtime
from tests.support import wait_until


def test_two_tasks_on_the_same_links(
    app_client: TestClient, rt: Runtime, digit_files: list[tuple[str, str]]
) -> None:
    c = app_client
    links = digit_files[:120]
    # Task A: the digit itself. Task B: parity, on the same files.
    a = c.post(
        "/api/v1/tasks",
        json={
            "name": "digit",
            "category": "image-classification",
            "labels": [str(d) for d in range(10)],
        },
    ).json()["id"]
    b = c.post(
        "/api/v1/tasks",
        json={"name": "parity", "category": "image-classification", "labels": ["even", "odd"]},
    ).json()["id"]
    items_a = c.post(
        f"/api/v1/tasks/{a}/items",
        json={"items": [{"data": p, "external_id": str(i)} for i, (p, _) in enumerate(links)]},
    ).json()["items"]
    items_b = c.post(
        f"/api/v1/tasks/{b}/items",
        json={"items": [{"data": p, "external_id": str(i)} for i, (p, _) in enumerate(links)]},
    ).json()["items"]
    assert not {i["id"] for i in items_a} & {i["id"] for i in items_b}

    def parity(label: str) -> str:
        return "even" if int(label) % 2 == 0 else "odd"

    # Interleave the two tasks' labels so their trainings overlap.
    for n in range(60):
        c.post(
            f"/api/v1/tasks/{a}/annotations",
            json={"annotations": [{"item_id": items_a[n]["id"], "labels": [links[n][1]]}]},
        )
        c.post(
            f"/api/v1/tasks/{b}/annotations",
            json={"annotations": [{"item_id": items_b[n]["id"], "labels": [parity(links[n][1])]}]},
        )
    wait_until(
        lambda: (
            not c.get(f"/api/v1/tasks/{a}").json()["training"]
            and not c.get(f"/api/v1/tasks/{b}").json()["training"]
        )
    )

    ta, tb = c.get(f"/api/v1/tasks/{a}").json(), c.get(f"/api/v1/tasks/{b}").json()
    assert ta["counts"]["human_labelled"] == 60 and tb["counts"]["human_labelled"] == 60
    assert ta["served_version"] is not None and tb["served_version"] is not None

    # Each task's pre-labels use only its own label set.
    for n in range(60, 80):
        pa = c.get(f"/api/v1/tasks/{a}/predictions", params={"item_id": items_a[n]["id"]}).json()
        pb = c.get(f"/api/v1/tasks/{b}/predictions", params={"item_id": items_b[n]["id"]}).json()
        assert pa["labels"][0] in [str(d) for d in range(10)] and set(pa["scores"]) == {
            str(d) for d in range(10)
        }
        assert pb["labels"][0] in ("even", "odd") and set(pb["scores"]) == {"even", "odd"}
    # An item of one task is not an item of the other.
    assert (
        c.get(f"/api/v1/tasks/{b}/predictions", params={"item_id": items_a[0]["id"]}).status_code
        == 404
    )
    assert (
        c.post(
            f"/api/v1/tasks/{b}/annotations",
            json={"annotations": [{"item_id": items_a[70]["id"], "labels": ["odd"]}]},
        ).status_code
        == 404
    )

    # Models and folders are per task.
    models_a = c.get(f"/api/v1/tasks/{a}/models").json()
    assert all(v["n_labels"] <= 60 for v in models_a)
    folder_a, folder_b = rt.folder(a), rt.folder(b)
    assert folder_a.path != folder_b.path
    assert any(folder_a.inference.iterdir()) and any(folder_b.inference.iterdir())

    # Deleting A leaves B whole.
    assert c.delete(f"/api/v1/tasks/{a}").status_code == 204
    assert c.get(f"/api/v1/tasks/{a}").status_code == 404
    assert not folder_a.path.exists()
    tb_after = c.get(f"/api/v1/tasks/{b}").json()
    assert tb_after["counts"] == tb["counts"] and tb_after["served_version"] == tb["served_version"]
    p = c.get(f"/api/v1/tasks/{b}/predictions", params={"item_id": items_b[90]["id"]}).json()
    assert p["status"] == "ok" and p["labels"][0] in ("even", "odd")
    # A new task never reuses the deleted task's id (its folder and caches were keyed by it).
    new = c.post(
        "/api/v1/tasks",
        json={"name": "new", "category": "image-classification", "labels": ["x", "y"]},
    ).json()["id"]
    assert new not in (a, b)
