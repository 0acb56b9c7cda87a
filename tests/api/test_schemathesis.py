"""The API against its own OpenAPI schema, with schemathesis: generated requests (valid and invalid)
to every operation, ids pinned to real tasks, items and versions so the calls reach deep into the
routes. Bounded and deterministic: a fixed number of examples per operation, a fixed seed, no
shrinking. Zero server errors, and every answer (status, content type, body) as documented."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from labelloop.api.app import create_app
from labelloop.config import Settings
from labelloop.jobs.local import LocalJobs
from labelloop.runtime import Runtime
from tests.support import wait_until

#: Examples per operation and mode: 31 operations x (8 valid + 4 invalid) requests at most.
EXAMPLES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 4}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Operations that must have answered 2xx at least once.
DEEP = [
    "POST /api/v1/tasks",
    "GET /api/v1/tasks/{task_id}",
    "PATCH /api/v1/tasks/{task_id}",
    "GET /api/v1/tasks/{task_id}/items/{item_id}",
    "POST /api/v1/tasks/{task_id}/items",
    "POST /api/v1/tasks/{task_id}/annotations",
    "GET /api/v1/tasks/{task_id}/predictions",
    "POST /api/v1/tasks/{task_id}/predict",
    "GET /api/v1/tasks/{task_id}/next",
    "GET /api/v1/tasks/{task_id}/models",
    "POST /api/v1/tasks/{task_id}/models/{version}/promote",
    "GET /api/v1/tasks/{task_id}/jobs",
    "GET /api/v1/tasks/{task_id}/metrics",
    "GET /api/v1/tasks/{task_id}/suspects",
    "GET /api/v1/tasks/{task_id}/export",
    "GET /api/v1/tasks/{task_id}/items/{item_id}/content",
    "GET /api/v1/tasks/{task_id}/items",
    "GET /api/v1/tasks/{task_id}/progress",
    "POST /api/v1/annotator-tokens",
    "GET /api/v1/annotator-tokens",
    "GET /api/v1/me",
]
TEXTS = ["great film", "loved it", "awful plot", "boring and slow", "superb acting", "dull"]


@dataclass
class Pinned:
    """Real ids the generated requests are pointed at (one generated id in four stays as drawn,
    so unknown ids are exercised too)."""

    tasks: list[int]
    items: dict[int, list[int]]
    spare: int  # a task no request may delete: DELETE is pointed elsewhere

    def pin(self, case: Any) -> None:
        params = case.path_parameters or {}
        if "task_id" in params and isinstance(params["task_id"], int):
            drawn = params["task_id"]
            if case.method.upper() == "DELETE":
                params["task_id"] = drawn if drawn not in self.tasks else self.spare
            elif drawn % 4:
                params["task_id"] = self.tasks[drawn % len(self.tasks)]
        task = params.get("task_id")
        if "item_id" in params and isinstance(params["item_id"], int) and params["item_id"] % 4:
            ids = self.items.get(task) or [1]
            params["item_id"] = ids[params["item_id"] % len(ids)]
        if "version" in params and isinstance(params["version"], int) and params["version"] % 4:
            params["version"] = 0
        query = case.query or {}
        if isinstance(query.get("item_id"), int) and query["item_id"] % 4:
            ids = self.items.get(task) or [1]
            query["item_id"] = ids[query["item_id"] % len(ids)]
        body = case.body
        policy = body.get("policy") if isinstance(body, dict) else None
        if isinstance(policy, dict) and isinstance(policy.get("hotkeys"), dict):
            # Hotkeys name the task's own labels (drawn names almost never do): keep the keys drawn.
            labels = body.get("labels") if isinstance(body.get("labels"), list) else []
            policy["hotkeys"] = dict(zip(labels, policy["hotkeys"].values(), strict=False))
        if isinstance(body, dict) and isinstance(body.get("annotations"), list) and task:
            # Labels name the trained task's labels (the schema's example does): send them there.
            params["task_id"] = self.tasks[0]
            ids = self.items[self.tasks[0]]
            for annotation in body["annotations"]:
                if isinstance(annotation, dict) and isinstance(annotation.get("item_id"), int):
                    annotation["item_id"] = ids[annotation["item_id"] % len(ids)]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, Pinned]]:
    """The app over SQLite with a text task that has a served model, and one without."""
    images = tmp_path / "images"
    images.mkdir()
    rt = Runtime(Settings(data_dir=tmp_path / "data", import_roots=[images]), migrate_schema=True)
    rt.attach_jobs(LocalJobs(rt, workers=2, threads=True))
    rt.jobs.start()
    app = create_app(rt, manage_jobs=False)
    with TestClient(app) as c:
        trained = c.post(
            "/api/v1/tasks",
            json={
                # Not the schema's example name: the example itself must be able to create its task.
                "name": "trained reviews",
                "category": "text-classification",
                "labels": ["pos", "neg"],
                "policy": {"min_labels": 6, "cv_folds": 2, "seed": 1},
            },
        ).json()["id"]
        added = c.post(
            f"/api/v1/tasks/{trained}/items",
            json={
                "items": [
                    {"data": t, "external_id": f"review-{n}"} for n, t in enumerate(TEXTS * 3)
                ]
            },
        ).json()["items"]
        labels = [
            {"item_id": it["id"], "labels": ["pos" if n % 6 in (0, 1, 4) else "neg"]}
            for n, it in enumerate(added[:8])
        ]
        assert c.post(f"/api/v1/tasks/{trained}/annotations", json={"annotations": labels})
        wait_until(lambda: c.get(f"/api/v1/tasks/{trained}").json()["served_version"] == 0)
        wait_until(lambda: not c.get(f"/api/v1/tasks/{trained}").json()["training"])
        fresh = c.post(
            "/api/v1/tasks",
            json={
                "name": "multi",
                "category": "text-classification",
                "extra": "multi-label",
                "labels": ["a", "b", "c"],
            },
        ).json()["id"]
        more = c.post(
            f"/api/v1/tasks/{fresh}/items", json={"items": [{"data": t} for t in TEXTS]}
        ).json()["items"]
        spare = c.post(
            "/api/v1/tasks",
            json={"name": "spare", "category": "image-classification", "labels": ["x", "y"]},
        ).json()["id"]
    pinned = Pinned(
        tasks=[trained, fresh],
        items={trained: [it["id"] for it in added], fresh: [it["id"] for it in more]},
        spare=spare,
    )
    yield app, pinned
    rt.close()


def send(
    case: Any, operation: Any, label: str, failures: list[str], answered: Counter[str]
) -> None:
    """Send one request and check its answer; count a 2xx under its operation."""
    answered["sent"] += 1
    try:
        if case.call_and_validate(checks=CHECKS).status_code < 300:
            answered[operation.label] += 1
    except (Exception, BaseExceptionGroup) as exc:  # one report covering every operation
        failures.append(f"{label}: {exc}")


def exercise(
    operation: Any,
    mode: GenerationMode,
    pinned: Pinned,
    failures: list[str],
    answered: Counter[str],
) -> None:
    """Send ``EXAMPLES[mode]`` generated requests to one operation; count its 2xx answers."""
    label = f"{operation.label} ({mode.value})"

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,  # a fixed seed (what it draws still differs between processes)
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        pinned.pin(case)
        send(case, operation, label, failures, answered)

    try:
        call()
    except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
        assert mode is GenerationMode.NEGATIVE, label


def documented_bodies(spec: dict[str, Any], operation: Any) -> list[Any]:
    """The request bodies the schema documents for ``operation`` (its JSON body's examples)."""
    body = spec["paths"][operation.path][operation.method.lower()].get("requestBody")
    if body is None or "application/json" not in body["content"]:
        return []
    schema = body["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return list(schema.get("examples", []))


def send_documented(
    operation: Any,
    spec: dict[str, Any],
    pinned: Pinned,
    failures: list[str],
    answered: Counter[str],
) -> None:
    """Send the documented examples as they stand, pointed at the trained task: generation may
    or may not draw them, so the ones users copy from the docs are checked every run."""
    for body in documented_bodies(spec, operation):
        params = {p.name: 0 for p in operation.path_parameters}
        if "task_id" in params:
            params["task_id"] = pinned.tasks[0]
        if "item_id" in params:
            params["item_id"] = pinned.items[pinned.tasks[0]][0]
        case = operation.Case(
            path_parameters=params or None, body=body, media_type="application/json"
        )
        if isinstance(body, dict) and "annotations" in body:
            pinned.pin(case)  # the example's item ids, made the trained task's
        send(case, operation, f"{operation.label} (documented {body})", failures, answered)


def test_the_api_keeps_its_schema(served: tuple[Any, Pinned]) -> None:
    app, pinned = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    spec = app.openapi()
    failures: list[str] = []
    answered: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        send_documented(operation, spec, pinned, failures, answered)
        for mode in EXAMPLES:
            exercise(operation, mode, pinned, failures, answered)
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:30])
    assert answered["sent"] >= 300
    # The pinned ids take the requests past "no such task" into the routes' work.
    assert set(DEEP) <= set(answered), set(DEEP) - set(answered)
