"""Prometheus metrics at /metrics: requests and latencies, and figures read from the store."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support import wait_until


def scrape(c: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_follow_the_loop(
    app_client: TestClient, digit_files: list[tuple[str, str]]
) -> None:
    c = app_client
    task_id = c.post(
        "/api/v1/tasks",
        json={
            "name": "d",
            "category": "image-classification",
            "labels": [str(d) for d in range(10)],
        },
    ).json()["id"]
    items = c.post(
        f"/api/v1/tasks/{task_id}/items", json={"items": [{"data": p} for p, _ in digit_files[:60]]}
    ).json()["items"]
    truth = {it["id"]: digit_files[n][1] for n, it in enumerate(items)}
    for n, it in enumerate(items[:30]):
        r = c.post(
            f"/api/v1/tasks/{task_id}/annotations",
            json={"annotations": [{"item_id": it["id"], "labels": [truth[it["id"]]]}]},
        ).json()
        if r["training_triggered"]:
            wait_until(lambda: not c.get(f"/api/v1/tasks/{task_id}").json()["training"])
        if n == 0:
            c.get("/api/v1/tasks/999")
    c.get("/no/such/path/1")
    wait_until(lambda: not c.get(f"/api/v1/tasks/{task_id}").json()["training"])
    m = scrape(c)
    t = str(task_id)
    route = "/api/v1/tasks/{task_id}/annotations"
    assert (
        m[
            (
                "labelloop_http_requests_total",
                (("method", "POST"), ("route", route), ("status", "201")),
            )
        ]
        == 30
    )
    assert (
        m[
            (
                "labelloop_http_requests_total",
                (("method", "GET"), ("route", "/api/v1/tasks/{task_id}"), ("status", "404")),
            )
        ]
        == 1
    )
    assert (
        m[
            (
                "labelloop_http_requests_total",
                (("method", "GET"), ("route", "unmatched"), ("status", "404")),
            )
        ]
        == 1
    )
    assert (
        m[("labelloop_http_request_duration_seconds_count", (("method", "POST"), ("route", route)))]
        == 30
    )
    versions = c.get(f"/api/v1/tasks/{task_id}/models").json()
    ready = [v for v in versions if v["status"] in ("ready", "pruned")]  # pruned: retention
    assert m[("labelloop_model_versions_total", (("task", t),))] == len(ready)
    assert m[("labelloop_versions_promoted_total", (("task", t),))] == sum(
        v["promoted"] for v in ready
    )
    assert (
        abs(
            m[("labelloop_training_seconds_total", (("task", t),))]
            - sum(v["train_seconds"] for v in ready)
        )
        < 1e-6
    )
    served = c.get(f"/api/v1/tasks/{task_id}").json()["served_version"]
    assert m[("labelloop_served_version", (("task", t),))] == served
    er = c.get(f"/api/v1/tasks/{task_id}/metrics").json()["edit_rate"]
    assert m[("labelloop_labels_submitted_total", (("task", t),))] == er["submitted"] == 30
    assert abs(m[("labelloop_edit_rate", (("task", t),))] - er["overall"]) < 1e-9
    jobs = c.get(f"/api/v1/tasks/{task_id}/jobs", params={"limit": 1000}).json()
    done_train = sum(1 for j in jobs if j["kind"] == "train" and j["state"] == "done")
    assert m[("labelloop_jobs", (("kind", "train"), ("state", "done")))] == done_train
    assert m[("labelloop_items", (("status", "ready"), ("task", t)))] == 60
    assert ("labelloop_backend_queue_depth", (("backend", "local"),)) in m


def test_requests_are_counted_under_the_route_that_matched(app_client: TestClient) -> None:
    c = app_client
    task_id = c.post(
        "/api/v1/tasks",
        json={"name": "t", "category": "text-classification", "labels": ["a", "b"]},
    ).json()["id"]
    items = c.post(f"/api/v1/tasks/{task_id}/items", json={"items": [{"data": "x"}]}).json()
    item_id = items["items"][0]["id"]
    assert task_id == item_id  # the same value in both places: it used to name both {item_id}
    assert c.get(f"/api/v1/tasks/{task_id}/items/{item_id}").status_code == 200
    assert c.get("/docs").status_code == 200
    assert c.get("/docs-assets/swagger-ui.css").status_code == 200
    assert c.get("/ui/label.html").status_code == 200
    m = scrape(c)
    routes = {
        dict(labels)["route"] for name, labels in m if name == "labelloop_http_requests_total"
    }
    assert "/api/v1/tasks/{task_id}/items/{item_id}" in routes
    assert {"/docs", "/docs-assets", "/ui"} <= routes
    assert not any("{item_id}/items" in r for r in routes)


def test_route_templates_put_the_prefix_in_front() -> None:
    from labelloop.observability import route_template

    both = {"task_id": "3", "item_id": "3"}
    assert (
        route_template("/api/v1/tasks/3/items/3", "/tasks/{task_id}/items/{item_id}", both)
        == "/api/v1/tasks/{task_id}/items/{item_id}"
    )
    assert route_template("/health", "/health", {}) == "/health"
    assert route_template("/", "/", {}) == "/"
    assert (
        route_template("/orgs/7/tasks/3", "/tasks/{task_id}", {"org": "7", "task_id": "3"})
        == "/orgs/{org}/tasks/{task_id}"
    )
