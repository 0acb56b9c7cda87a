"""The HTTP contract: PATCH of a task, 405 with every allowed method, 401 with a challenge, and a
500 that closes its connection cleanly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import SecretStr

from labelloop.api.app import create_app
from labelloop.demo import free_port
from labelloop.runtime import Runtime
from labelloop.service import tasks as task_service
from tests.support import wait_until

TOKEN = "0123456789abcdef-test-token"


def make_task(c: TestClient, **policy: Any) -> dict[str, Any]:
    body = {"name": "t", "category": "text-classification", "labels": ["a", "b"], "policy": policy}
    r = c.post("/api/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    return answer


def test_patch_changes_the_policy_fields_given(app_client: TestClient) -> None:
    c = app_client
    task = make_task(c, growth=0.5, selection="entropy")
    r = c.patch(f"/api/v1/tasks/{task['id']}", json={"policy": {"min_labels": 20}})
    assert r.status_code == 200, r.text
    policy = r.json()["policy"]
    assert policy["min_labels"] == 20
    assert policy["growth"] == 0.5 and policy["selection"] == "entropy"  # the others stay
    assert c.get(f"/api/v1/tasks/{task['id']}").json()["policy"] == policy

    r = c.patch(
        f"/api/v1/tasks/{task['id']}",
        json={"name": "renamed", "policy": {"auto_label": {"target_accuracy": 0.9}}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "renamed"
    assert r.json()["policy"]["auto_label"]["target_accuracy"] == 0.9
    assert r.json()["auto_label"] == {"threshold": None, "reason": "no model yet"}
    r = c.patch(f"/api/v1/tasks/{task['id']}", json={"policy": {"auto_label": None}})
    assert r.json()["policy"]["auto_label"] is None and r.json()["auto_label"] is None


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"policy": {"min_labels": -1}}, 422, "policy.min_labels: must be at least 2"),
        ({"policy": {"learner": "no-such-learner"}}, 422, "no-such-learner"),
        ({"policy": {"learner_params": {"C": "\x00"}}}, 422, "NUL"),
        ({"policy": {"seed": 7}}, 422, "seed is fixed"),
        ({"labels": ["x", "y"]}, 422, "labels: is not a field of this request"),
        ({"name": ""}, 422, "name: must not be empty"),
        ({"policy": "fast"}, 422, "policy: must be an object"),
    ],
)
def test_patch_is_validated_like_creation(
    app_client: TestClient, change: dict[str, Any], status: int, fragment: str
) -> None:
    c = app_client
    task = make_task(c)
    r = c.patch(f"/api/v1/tasks/{task['id']}", json=change)
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"]
    assert c.get(f"/api/v1/tasks/{task['id']}").json() == task  # nothing written


def test_patch_of_an_unknown_task_is_404(app_client: TestClient) -> None:
    r = app_client.patch("/api/v1/tasks/4242", json={"policy": {"min_labels": 3}})
    assert r.status_code == 404 and r.json() == {"error": "not_found", "detail": "no task 4242"}


def test_a_patched_policy_decides_the_next_training(app_client: TestClient) -> None:
    c = app_client
    task = make_task(c, min_labels=50)
    texts = [f"good {n}" if n % 2 else f"bad {n}" for n in range(12)]
    items = c.post(
        f"/api/v1/tasks/{task['id']}/items", json={"items": [{"data": t} for t in texts]}
    ).json()["items"]
    labels = [
        {"item_id": it["id"], "labels": ["a" if n % 2 else "b"]} for n, it in enumerate(items)
    ]
    first = c.post(f"/api/v1/tasks/{task['id']}/annotations", json={"annotations": labels[:11]})
    assert first.status_code == 201 and not first.json()["training_triggered"]
    c.patch(f"/api/v1/tasks/{task['id']}", json={"policy": {"min_labels": 10}})
    second = c.post(f"/api/v1/tasks/{task['id']}/annotations", json={"annotations": labels[11:]})
    assert second.status_code == 201 and second.json()["training_triggered"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/v1/tasks/1", "GET, PATCH, DELETE"),
        ("POST", "/api/v1/tasks/1", "GET, PATCH, DELETE"),
        ("DELETE", "/api/v1/tasks", "GET, POST"),
        ("GET", "/api/v1/tasks/1/annotations", "POST"),
        ("PUT", "/labelstudio/health", "GET"),
    ],
)
def test_405_lists_every_allowed_method(
    app_client: TestClient, method: str, path: str, allowed: str
) -> None:
    r = app_client.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allowed
    assert r.json()["error"] == "method_not_allowed" and method in r.json()["detail"]


@pytest.fixture
def secured(rt: Runtime) -> Iterator[TestClient]:
    rt.settings.api_token = SecretStr(TOKEN)
    with TestClient(create_app(rt, manage_jobs=False)) as c:
        yield c


@pytest.mark.parametrize("authorization", [None, "Bearer ", "Bearer wrong-token-0123456789", TOKEN])
def test_401_carries_a_challenge(secured: TestClient, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in ("/api/v1/tasks", "/metrics"):
        r = secured.get(path, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="labelloop"'
        assert r.json() == {"error": "unauthorized", "detail": "missing or wrong API token"}
    r = secured.get("/labelstudio/health", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Basic realm="labelloop", Bearer realm="labelloop"'


def test_the_right_token_passes(secured: TestClient) -> None:
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert secured.get("/api/v1/tasks", headers=ok).status_code == 200
    assert secured.get("/labelstudio/health", auth=("labelstudio", TOKEN)).status_code == 200
    assert secured.get("/health").status_code == 200  # the health check needs no token


def _boom(*_: object) -> object:
    raise RuntimeError("a bug, with a secret: <object at 0x7f00>")


def test_a_500_says_connection_close(app_client: TestClient, monkeypatch: Any) -> None:
    monkeypatch.setattr(task_service, "list_tasks", _boom)
    with TestClient(app_client.app, raise_server_exceptions=False) as c:
        r = c.get("/api/v1/tasks")
    assert r.status_code == 500
    assert r.headers["connection"] == "close"
    assert r.json() == {"error": "internal_error", "detail": "internal error; see the server log"}


def test_a_client_goes_on_after_a_500(rt: Runtime, monkeypatch: Any) -> None:
    """Over a real keep-alive connection: the server closed it after a 500 without saying so,
    and the client's next request on it failed with a reset."""
    monkeypatch.setattr(task_service, "list_tasks", _boom)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(rt, manage_jobs=False), host="127.0.0.1", port=port, log_level="critical"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 30, "the server to start")
        assert thread.is_alive(), "the server exited while starting"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(5):
                assert http.get("/api/v1/tasks").status_code == 500
                assert http.get("/health").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=20)
