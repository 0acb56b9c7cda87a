"""The OpenAPI schema documents every route's answer and every error with the real body, and the
client's types are the server's schemas (they cannot drift apart)."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

from labelloop import client, schemas
from labelloop.api.app import create_app
from labelloop.config import Settings
from labelloop.fetch import IMAGE_FORMATS
from labelloop.runtime import Runtime

#: Answers that are not JSON, with the media types they document.
NOT_JSON = {
    ("get", "/api/v1/tasks/{task_id}/export"): {
        "application/x-ndjson",
        "text/csv",
        "text/plain",  # conll: a text-spans task's tokens and BIO tags
    },
    ("get", "/api/v1/tasks/{task_id}/items/{item_id}/content"): {
        *IMAGE_FORMATS.values(),
        "text/plain",
    },
    ("get", "/metrics"): {"text/plain; version=1.0.0; charset=utf-8"},
}
ERROR_REF = "#/components/schemas/ErrorPublic"


@pytest.fixture
def spec(tmp_path: Path) -> Iterator[dict[str, Any]]:
    rt = Runtime(Settings(data_dir=tmp_path), migrate_schema=True)
    yield create_app(rt, manage_jobs=False).openapi()
    rt.close()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def test_every_answer_has_its_schema(spec: dict[str, Any]) -> None:
    seen = 0
    for method, path, op in operations(spec):
        seen += 1
        ok = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        assert len(ok) == 1, (method, path, ok)
        ((status, answer),) = ok.items()
        content = answer.get("content", {})
        if status == "204":
            assert not content, (method, path)
        elif (method, path) in NOT_JSON:
            assert set(content) == NOT_JSON[(method, path)], (method, path)
        else:
            assert set(content) == {"application/json"}, (method, path, content)
            schema = content["application/json"]["schema"]
            assert schema.get("$ref") or schema.get("type"), (method, path, schema)
    assert seen >= 30


def test_every_error_is_documented_with_the_real_body(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["ErrorPublic"]["required"] == ["error", "detail"]
    for method, path, op in operations(spec):
        statuses = {int(s) for s in op["responses"] if not s.startswith("2")}
        for status in statuses:
            answer = op["responses"][str(status)]
            assert answer["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (
                method,
                path,
                status,
            )
        params = {p["in"] for p in op.get("parameters", [])}
        if path.startswith(("/api/v1", "/labelstudio", "/metrics")):
            assert 401 in statuses, (method, path)
        if "path" in params:
            assert {404, 422} <= statuses, (method, path)
        if params or "requestBody" in op:
            assert 422 in statuses, (method, path)
        if "requestBody" in op:
            assert 413 in statuses, (method, path)
        if path.startswith("/api/v1/tasks/{task_id}"):
            assert 503 in statuses, (method, path)


def test_ids_are_bounded_to_the_store(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        for p in op.get("parameters", []):
            if p["name"] in ("task_id", "item_id", "version"):
                assert p["schema"]["maximum"] == 2**31 - 1, (method, path, p)
                assert p["schema"]["minimum"] in (0, 1), (method, path, p)


def test_patch_is_documented(spec: dict[str, Any]) -> None:
    op = spec["paths"]["/api/v1/tasks/{task_id}"]["patch"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/TaskUpdate"}


def _names(tp: Any) -> Iterator[Any]:
    """The classes a return annotation is built from."""
    origin = get_origin(tp)
    if origin is None:
        yield tp
    else:
        yield origin
        for arg in get_args(tp):
            yield from _names(arg)


def test_the_clients_types_are_the_servers_schemas() -> None:
    assert client.Task is schemas.TaskPublic
    assert "auto_label" in get_type_hints(client.Task)  # the field the hand-written copy lacked
    allowed = {
        list,
        dict,
        str,
        bytes,
        int,
        type(None),
        Any,
        Iterator,
        typing.Union,
        types.UnionType,
    }
    for name, method in inspect.getmembers(client.Client, inspect.isfunction):
        if name.startswith("_"):
            continue
        returned = get_type_hints(method)["return"]
        for part in _names(returned):
            from_schemas = getattr(part, "__module__", "") == "labelloop.schemas"
            assert from_schemas or part in allowed, (name, part)
