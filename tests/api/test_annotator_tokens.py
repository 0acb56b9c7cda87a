"""Annotator tokens: the admin creates them; each labels as its annotator (whatever the body says),
reads, and gets 403 for what only the admin may do; only a hash is stored; revoking works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from labelloop.api.app import create_app
from labelloop.config import Settings
from labelloop.jobs.local import LocalJobs
from labelloop.runtime import Runtime
from labelloop.store.models import AnnotatorToken

ADMIN = "admin-token-0123456789abcdef"


@pytest.fixture
def secured(tmp_path: Path, database_url: str | None) -> Iterator[tuple[TestClient, Runtime]]:
    rt = Runtime(
        Settings(data_dir=tmp_path / "data", database_url=database_url, api_token=ADMIN),
        migrate_schema=True,
    )
    rt.attach_jobs(LocalJobs(rt, workers=1, threads=True))
    with TestClient(create_app(rt)) as c:
        yield c, rt
    rt.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_annotator_token_labels_as_its_annotator_and_may_not_delete_or_promote(
    secured: tuple[TestClient, Runtime],
) -> None:
    c, rt = secured
    admin = auth(ADMIN)
    task = c.post(
        "/api/v1/tasks",
        headers=admin,
        json={"name": "t", "category": "text-classification", "labels": ["a", "b"]},
    ).json()
    t = task["id"]
    c.post(
        f"/api/v1/tasks/{t}/items", headers=admin, json={"items": [{"data": "x"}, {"data": "y"}]}
    )
    # Only the admin creates tokens.
    assert c.post("/api/v1/annotator-tokens", json={"annotator": "Ada"}).status_code == 401
    made = c.post("/api/v1/annotator-tokens", headers=admin, json={"annotator": " Ada "})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    assert made.json()["annotator"] == "Ada" and token.startswith("llann_")
    ada = auth(token)

    assert c.get("/api/v1/me", headers=ada).json() == {
        "role": "annotator",
        "annotator": "Ada",
        "token_required": True,
    }
    assert c.get("/api/v1/me", headers=admin).json()["role"] == "admin"

    # The token reserves and labels as Ada, whatever the request says.
    got = c.get(f"/api/v1/tasks/{t}/next", headers=ada, params={"annotator": "Eve"}).json()
    assert got["annotator"] == "Ada" and len(got["items"]) == 2
    item = got["items"][0]["id"]
    r = c.post(
        f"/api/v1/tasks/{t}/annotations",
        headers=ada,
        json={"annotations": [{"item_id": item, "labels": ["a"], "annotator": "Eve"}]},
    )
    assert r.status_code == 201, r.text
    history = c.get(f"/api/v1/tasks/{t}/items/{item}", headers=ada).json()["annotations"]
    assert [a["annotator"] for a in history] == ["Ada"]
    # Reading is allowed: the task, its items, progress, export.
    for path in (f"/api/v1/tasks/{t}", f"/api/v1/tasks/{t}/items", f"/api/v1/tasks/{t}/progress"):
        assert c.get(path, headers=ada).status_code == 200, path
    assert c.delete(f"/api/v1/tasks/{t}/reservations", headers=ada).json() == {"released": 1}

    # Everything else is the admin's: 403 in words, and nothing changes.
    refused: list[tuple[str, str, dict[str, Any] | None]] = [
        ("DELETE", f"/api/v1/tasks/{t}", None),
        ("POST", f"/api/v1/tasks/{t}/models/0/promote", None),
        ("POST", f"/api/v1/tasks/{t}/train", None),
        ("PATCH", f"/api/v1/tasks/{t}", {"archived": True}),
        ("POST", f"/api/v1/tasks/{t}/items", {"items": [{"data": "z"}]}),
        ("POST", "/api/v1/tasks", {"name": "u", "category": "text-classification", "labels": ["a", "b"]}),
        ("POST", "/api/v1/annotator-tokens", {"annotator": "Mallory"}),
        ("GET", "/api/v1/annotator-tokens", None),
        ("DELETE", "/api/v1/annotator-tokens/1", None),
    ]  # fmt: skip
    for method, path, body in refused:
        r = c.request(method, path, headers=ada, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"] == "forbidden" and "Ada" in r.json()["detail"], r.text
    assert c.get(f"/api/v1/tasks/{t}", headers=admin).json()["counts"]["items"] == 2
    assert len(c.get("/api/v1/annotator-tokens", headers=admin).json()) == 1

    # Only the token's hash is stored; revoking it locks it out.
    with rt.session() as s:
        stored = s.scalars(select(AnnotatorToken)).one()
    assert token not in (stored.token_hash, stored.annotator) and len(stored.token_hash) == 64
    assert c.delete(f"/api/v1/annotator-tokens/{stored.id}", headers=admin).status_code == 204
    assert c.get("/api/v1/me", headers=ada).status_code == 401
    listed = c.get("/api/v1/annotator-tokens", headers=admin).json()
    assert listed[0]["active"] is False and "token" not in listed[0]
    assert c.delete("/api/v1/annotator-tokens/999", headers=admin).status_code == 404


def test_on_a_server_without_an_admin_token_an_annotator_token_still_names_and_limits(
    app_client: TestClient,
) -> None:
    c = app_client
    token = c.post("/api/v1/annotator-tokens", json={"annotator": "Bo"}).json()["token"]
    assert c.get("/api/v1/me").json() == {
        "role": "admin",
        "annotator": None,
        "token_required": False,
    }
    assert c.get("/api/v1/me", headers=auth(token)).json()["annotator"] == "Bo"
    t = c.post(
        "/api/v1/tasks", json={"name": "t", "category": "text-classification", "labels": ["a", "b"]}
    ).json()["id"]
    assert c.delete(f"/api/v1/tasks/{t}", headers=auth(token)).status_code == 403


def test_the_403_is_documented_where_an_annotator_is_refused(app_client: TestClient) -> None:
    paths = app_client.get("/openapi.json").json()["paths"]
    assert "403" in paths["/api/v1/tasks/{task_id}"]["delete"]["responses"]
    assert "403" in paths["/api/v1/tasks/{task_id}/models/{version}/promote"]["post"]["responses"]
    assert "403" in paths["/api/v1/annotator-tokens"]["get"]["responses"]
    assert "403" not in paths["/api/v1/tasks/{task_id}"]["get"]["responses"]
    assert "403" not in paths["/api/v1/tasks/{task_id}/annotations"]["post"]["responses"]
