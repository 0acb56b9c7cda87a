"""Bad input gets a 4xx with a message, never a 500 or a traceback."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from labelloop import client, errors
from labelloop.config import Settings
from labelloop.jobs.local import LocalJobs
from labelloop.runtime import Runtime


def make(c: TestClient, **body: object) -> int:
    base: dict[str, object] = {
        "name": "t",
        "category": "image-classification",
        "labels": ["a", "b"],
    }
    base.update(body)
    r = c.post("/api/v1/tasks", json=base)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def assert_error(r, status: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    body = r.json()
    assert fragment.lower() in body["detail"].lower(), body
    assert "Traceback" not in r.text


def test_bad_input(app_client: TestClient, image_root: Path) -> None:
    c = app_client
    assert_error(c.get("/api/v1/tasks/999"), 404, "no task 999")
    assert_error(
        c.post(
            "/api/v1/tasks", json={"name": "x", "category": "audio-tagging", "labels": ["a", "b"]}
        ),
        422,
        "no learner",
    )
    assert_error(
        c.post(
            "/api/v1/tasks",
            json={
                "name": "x",
                "category": "image-classification",
                "extra": "multi-box",
                "labels": ["a"],
            },
        ),
        422,
        "no learner",
    )
    assert_error(
        c.post(
            "/api/v1/tasks",
            json={"name": "x", "category": "image-classification", "labels": ["a", "a"]},
        ),
        422,
        "unique",
    )
    assert_error(
        c.post(
            "/api/v1/tasks",
            json={
                "name": "x",
                "category": "image-classification",
                "labels": ["a", "b"],
                "policy": {"min_labels": -1},
            },
        ),
        422,
        "min_labels",
    )
    assert_error(
        c.post("/api/v1/tasks", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "malformed JSON",
    )

    t = make(c)
    # A link outside the import roots is refused when the item is created: nothing is stored.
    assert_error(
        c.post(f"/api/v1/tasks/{t}/items", json={"items": [{"data": "/nowhere/a.png"}]}),
        403,
        "outside the import roots",
    )
    missing = str(image_root / "missing.png")
    items = c.post(f"/api/v1/tasks/{t}/items", json={"items": [{"data": missing}]}).json()["items"]
    assert_error(
        c.post(
            f"/api/v1/tasks/{t}/annotations",
            json={"annotations": [{"item_id": items[0]["id"], "labels": ["zebra"]}]},
        ),
        422,
        "unknown label",
    )
    assert_error(
        c.post(
            f"/api/v1/tasks/{t}/annotations",
            json={"annotations": [{"item_id": items[0]["id"], "labels": ["a", "b"]}]},
        ),
        422,
        "exactly one label",
    )
    assert_error(
        c.post(
            f"/api/v1/tasks/{t}/annotations",
            json={"annotations": [{"item_id": 10**6, "labels": ["a"]}]},
        ),
        404,
        "no item",
    )
    assert_error(
        c.post(
            f"/api/v1/tasks/{t}/annotations",
            json={"annotations": [{"external_id": "nope", "labels": ["a"]}]},
        ),
        404,
        "external_id",
    )
    assert_error(
        c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": [{"labels": ["a"]}]}),
        422,
        "exactly one of item_id and external_id",
    )
    assert_error(
        c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": []}), 422, "no annotations"
    )
    assert_error(
        c.get(f"/api/v1/tasks/{t}/export", params={"format": "xml"}), 422, "unknown format"
    )
    assert_error(c.get(f"/api/v1/tasks/{t}/next", params={"limit": 0}), 422, "limit")
    assert_error(c.post(f"/api/v1/tasks/{t}/models/3/promote"), 404, "no model version 3")
    assert_error(c.post(f"/api/v1/tasks/{t}/train"), 422, "two classes")
    assert_error(c.get(f"/api/v1/tasks/{t}/predictions", params={"item_id": "x"}), 422, "item_id")

    # A bad bulk request stores nothing: no label is half-taken.
    ok, bad = (
        {"item_id": items[0]["id"], "labels": ["a"]},
        {"item_id": items[0]["id"], "labels": ["zebra"]},
    )
    assert (
        c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": [ok, bad]}).status_code == 422
    )
    assert c.get(f"/api/v1/tasks/{t}").json()["counts"]["human_labelled"] == 0

    # A link that cannot be read marks that item failed with a reason; the others go on.
    wait = c.get(f"/api/v1/tasks/{t}/items/{items[0]['id']}").json()
    for _ in range(200):
        if wait["status"] != "pending":
            break
        wait = c.get(f"/api/v1/tasks/{t}/items/{items[0]['id']}").json()
    assert wait["status"] == "failed" and "no such file" in wait["error"]


def test_oversized_payload(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rt = Runtime(Settings(data_dir=tmp_path, max_request_bytes=2000), migrate_schema=True)
    rt.attach_jobs(LocalJobs(rt, 1, threads=True))
    from labelloop.api.app import create_app

    with TestClient(create_app(rt)) as c:
        t = make(c)
        big = {"items": [{"data": "x" * 100} for _ in range(100)]}
        assert_error(c.post(f"/api/v1/tasks/{t}/items", json=big), 413, "over 2000 bytes")

        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b"x" * 500

        r = c.post(
            f"/api/v1/tasks/{t}/items",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert_error(r, 413, "over 2000 bytes")
    rt.close()


def _subclasses(base: type) -> set[type]:
    found = set()
    for sub in base.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_client_and_server_exceptions_do_not_share_names() -> None:
    """Both once had ``Unauthorized`` and ``PayloadTooLarge``: one import could not hold both."""
    server = {cls.__name__ for cls in _subclasses(errors.LabelloopError)}
    in_client = {
        name
        for name, obj in vars(client).items()
        if isinstance(obj, type) and issubclass(obj, Exception)
    }
    assert in_client and server
    assert not server & in_client, server & in_client
    assert issubclass(client.NotFoundError, errors.ClientError)


def test_the_drawn_tree_is_the_tree() -> None:
    """Every exception class is drawn in errors.py's docstring under its parent, with its status."""
    doc = errors.__doc__ or ""
    drawn: dict[str, tuple[int, str | None]] = {}
    parents: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = re.match(r"^(\s*)(?:[│ ]*[├└]── )?(\w+)\b[ ·]*(\d{3})?", line)
        if not m or not line.strip() or not m.group(2)[0].isupper():
            continue
        depth = len(line) - len(line.lstrip(" │├└─"))
        while parents and parents[-1][0] >= depth:
            parents.pop()
        name = m.group(2)
        if hasattr(errors, name):
            drawn[name] = (depth, parents[-1][1] if parents else None)
            parents.append((depth, name))
            status = m.group(3)
            cls = getattr(errors, name)
            if status and issubclass(cls, errors.LabelloopError):
                assert cls.status_code == int(status), name
            elif status:  # the client's class for that status
                assert type(errors.api_error(int(status), "code", "detail")) is cls, name
    classes = {
        name: obj
        for name, obj in vars(errors).items()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors.__name__
    }
    assert set(drawn) == set(classes), set(classes) ^ set(drawn)
    for name, (_, parent) in drawn.items():
        base = classes[name].__bases__[0]
        assert (base.__name__ if base is not Exception else None) == parent, (name, parent)
