"""The ML-backend protocol with requests shaped like the ones Label Studio 1.23 sends.

The shapes follow Label Studio's ``ml/api_connector.py`` (setup, predict) and its webhook payloads
(``action``, ``annotation`` with ``result`` items, ``task``, ``project``). Media lives on a fake
Label Studio that, like the real one, answers ``/data/upload/...`` only with ``Token`` auth.
"""

from __future__ import annotations

import base64
import json
import logging
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labelloop.demo import free_port
from labelloop.runtime import Runtime
from labelloop.store.models import Job
from tests.support import wait_until

TOKEN = "ls-secret-token-0123456789"
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="digit" toName="image">
    <Choice value="0"/><Choice value="1"/><Choice value="2"/>
  </Choices>
</View>"""


def jwt(payload: dict[str, Any]) -> str:
    """A token shaped like Label Studio's personal access tokens (not signed: the fake trusts it)."""

    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


#: A personal access token (Label Studio's default since 1.14): a JWT refresh token.
PAT = jwt({"token_type": "refresh", "exp": 4102444800, "user_id": 1})
ACCESS = jwt({"token_type": "access", "exp": 4102444800, "user_id": 1})


class FakeLabelStudio:
    """Serves PNG files under ``/data/upload/1/`` to requests that carry the right token: the
    legacy ``Token`` key, or with ``pat``, a ``Bearer`` access token that ``/api/token/refresh``
    gives for the personal access token (as Label Studio does with legacy tokens off)."""

    def __init__(self, files: dict[str, bytes], pat: bool = False) -> None:
        self.files = files
        self.auth_seen: list[str | None] = []
        self.paths: list[str] = []
        self.refreshes = 0
        owner = self
        wanted = f"Bearer {ACCESS}" if pat else f"Token {TOKEN}"

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(size) or b"{}")
                ok = pat and self.path == "/api/token/refresh" and body.get("refresh") == PAT
                owner.refreshes += 1
                answer = json.dumps({"access": ACCESS} if ok else {"detail": "bad"}).encode()
                self.send_response(200 if ok else 401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self) -> None:
                owner.auth_seen.append(self.headers.get("Authorization"))
                owner.paths.append(self.path)
                body = owner.files.get(self.path)
                if self.headers.get("Authorization") != wanted:
                    self.send_response(401)
                    self.end_headers()
                    return
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving and close the socket, so a fetch still under way is refused at once
        (a socket left open accepts and never answers: the fetch waits out its timeout)."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_ls(
    digit_files: list[tuple[str, str]],
) -> Iterator[tuple[FakeLabelStudio, list[dict[str, Any]]]]:
    """Label Studio tasks for the digits 0, 1 and 2, with media hosted by the fake server."""
    chosen = [(p, label) for p, label in digit_files if label in ("0", "1", "2")][:45]
    files = {f"/data/upload/1/{Path(p).name}": Path(p).read_bytes() for p, _ in chosen}
    server = FakeLabelStudio(files)
    tasks = [
        {
            "id": 100 + n,
            "data": {"image": f"/data/upload/1/{Path(p).name}"},
            "meta": {},
            "project": 7,
            "truth": label,
        }
        for n, (p, label) in enumerate(chosen)
    ]
    yield server, tasks
    server.close()


def project_body() -> dict[str, Any]:
    return {
        "id": 7,
        "title": "digits",
        "label_config": CONFIG,
        "created_at": "2026-11-27T10:00:00Z",
    }


def ls_task(t: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in t.items() if k != "truth"}


def annotation_event(
    action: str, annotation_id: int, t: dict[str, Any], choice: str | None, user: int = 1
) -> dict[str, Any]:
    result = (
        []
        if choice is None
        else [
            {
                "id": f"r{annotation_id}",
                "from_name": "digit",
                "to_name": "image",
                "type": "choices",
                "origin": "manual",
                "value": {"choices": [choice]},
            }
        ]
    )
    return {
        "action": action,
        "annotation": {
            "id": annotation_id,
            "result": result,
            "task": t["id"],
            "completed_by": user,
            "was_cancelled": False,
            "ground_truth": False,
            "lead_time": 2.5,
        },
        "task": ls_task(t),
        "project": project_body(),
    }


def predict_body(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tasks": [ls_task(t) for t in tasks],
        "project": "7.1764237600",
        "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": None},
    }


def setup(c: TestClient, url: str, token: str = TOKEN) -> dict[str, Any]:
    r = c.post(
        "/labelstudio/setup",
        json={
            "project": "7.1764237600",
            "schema": CONFIG,
            "hostname": url,
            "access_token": token,
            "extra_params": None,
        },
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_health(app_client: TestClient) -> None:
    for path in ("/labelstudio/", "/labelstudio/health"):
        r = app_client.get(path)
        assert r.status_code == 200 and r.json()["status"] == "UP"


def record_job_calls(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[int]]]:
    """What the request hands the job backend, in order: item predictions and queued job ids."""
    calls: list[tuple[str, list[int]]] = []
    jobs = rt.jobs
    enqueue, predict_items = jobs.enqueue, jobs.predict_items

    def recorded_enqueue(ids: Any) -> Any:
        calls.append(("enqueue", list(ids)))
        return enqueue(ids)

    def recorded_predict(spec: Any, version: int, item_ids: Any) -> Any:
        calls.append(("predict_items", list(item_ids)))
        return predict_items(spec, version, item_ids)

    monkeypatch.setattr(jobs, "enqueue", recorded_enqueue)
    monkeypatch.setattr(jobs, "predict_items", recorded_predict)
    return calls


def test_a_project_learns_from_its_annotations(
    app_client: TestClient,
    rt: Runtime,
    fake_ls: tuple[FakeLabelStudio, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    c = app_client
    server, tasks = fake_ls
    answer = setup(c, server.url)
    assert answer["model_version"] is None
    assert TOKEN not in json.dumps(answer)
    # The token is kept for media fetching only: in one owner-only file, never in the store.
    creds = rt.settings.resolved_data_dir / "labelstudio" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert json.loads(creds.read_text()) == {server.url: TOKEN}
    task_id = answer["task_id"]
    task = c.get(f"/api/v1/tasks/{task_id}").json()
    assert (task["category"], task["extra"], task["labels"]) == (
        "image-classification",
        "multi-class",
        ["0", "1", "2"],
    )
    # A second setup (Label Studio calls it before every prediction run) keeps the same task.
    assert setup(c, server.url)["task_id"] == task_id

    # Before the first model: one empty entry per task, so Label Studio stores nothing.
    r = c.post("/labelstudio/predict", json=predict_body(tasks[:5]))
    assert r.status_code == 200 and r.json()["results"] == [[] for _ in range(5)]

    # Annotations arrive by webhook; the 10th label queues training but the request returns.
    labelled = tasks[:15]
    for n, t in enumerate(labelled):
        r = c.post(
            "/labelstudio/webhook",
            json=annotation_event("ANNOTATION_CREATED", 500 + n, t, t["truth"]),
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ok"
    wait_until(lambda: not c.get(f"/api/v1/tasks/{task_id}").json()["training"], timeout=120)
    task = c.get(f"/api/v1/tasks/{task_id}").json()
    assert task["served_version"] is not None
    assert task["counts"]["human_labelled"] == 15
    assert (
        task["counts"]["failed"] == 0
    )  # every image was fetched from "Label Studio" with the token
    assert server.auth_seen and all(a == f"Token {TOKEN}" for a in server.auth_seen)
    items = [
        json.loads(line) for line in c.get(f"/api/v1/tasks/{task_id}/export").text.splitlines()
    ]
    # Stored as Label Studio wrote them: relative to the project's URL.
    assert all(i["data"].startswith("/data/upload/1/") for i in items)
    assert all(i["external_id"].startswith("ls:") for i in items)

    # Predictions for the other tasks, in Label Studio's format, with the model version.
    others = tasks[15:]
    calls = record_job_calls(rt, monkeypatch)
    r = c.post("/labelstudio/predict", json=predict_body(others))
    assert r.status_code == 200, r.text
    # The new items' featurize jobs were queued only after the request computed their features
    # (to predict them): a worker finds them cached instead of computing them at the same time.
    assert [what for what, _ in calls][:1] == ["predict_items"], calls
    queued = [j for what, ids in calls if what == "enqueue" for j in ids]
    with rt.session() as s:
        kinds = {s.get(Job, j).kind for j in queued}  # type: ignore[union-attr]
    assert kinds == {"featurize"}, calls
    body = r.json()
    version = f"model-time{task['served_version']}"
    assert body["model_version"] == version
    results = body["results"]
    assert len(results) == len(others)
    right = 0
    for t, res in zip(others, results, strict=True):
        assert res["model_version"] == version and 0.0 <= res["score"] <= 1.0
        (item,) = res["result"]
        assert (item["from_name"], item["to_name"], item["type"]) == ("digit", "image", "choices")
        right += item["value"]["choices"] == [t["truth"]]
    assert right >= 0.8 * len(others)
    # Each image was fetched once: the prediction request and the background job share it.
    assert sorted(server.paths) == sorted(set(server.paths)), server.paths
    assert len(server.paths) == len(tasks)

    # Updating an annotation changes the label (a new revision); deleting one retracts it.
    first = labelled[0]
    wrong = "1" if first["truth"] != "1" else "2"
    r = c.post(
        "/labelstudio/webhook", json=annotation_event("ANNOTATION_UPDATED", 500, first, wrong)
    )
    assert r.json()["status"] == "ok"
    item_id = next(i["item_id"] for i in items if i["external_id"] == f"ls:{first['id']}")
    assert c.get(f"/api/v1/tasks/{task_id}/items/{item_id}").json()["labels"] == [wrong]
    r = c.post(
        "/labelstudio/webhook",
        json={
            "action": "ANNOTATIONS_DELETED",
            "annotations": [{"id": 500}],
            "project": project_body(),
        },
    )
    assert r.status_code == 200 and r.json()["n"] == 1
    history = c.get(f"/api/v1/tasks/{task_id}/items/{item_id}").json()
    assert history["labels"] is None
    assert [a["labels"] for a in history["annotations"]] == [[first["truth"]], [wrong], None]
    assert c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["human_labelled"] == 14

    # "Start training" queues a run and answers at once.
    r = c.post("/labelstudio/webhook", json={"action": "START_TRAINING", "project": project_body()})
    assert r.status_code == 200 and r.json()["job_id"] is not None
    wait_until(lambda: not c.get(f"/api/v1/tasks/{task_id}").json()["training"], timeout=120)

    # Events labelloop has no use for are acknowledged and ignored.
    r = c.post(
        "/labelstudio/webhook", json={"action": "PROJECT_UPDATED", "project": project_body()}
    )
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert TOKEN not in caplog.text


def test_skipped_and_foreign_annotations_are_ignored(
    app_client: TestClient, fake_ls: tuple[FakeLabelStudio, list[dict[str, Any]]]
) -> None:
    c = app_client
    server, tasks = fake_ls
    setup(c, server.url)
    skipped = annotation_event("ANNOTATION_CREATED", 1, tasks[0], None)
    skipped["annotation"]["was_cancelled"] = True
    assert c.post("/labelstudio/webhook", json=skipped).json()["status"] == "ignored"
    other = annotation_event("ANNOTATION_CREATED", 2, tasks[1], "1")
    other["annotation"]["result"][0]["from_name"] = "something_else"
    assert c.post("/labelstudio/webhook", json=other).json()["status"] == "ignored"
    bad = annotation_event("ANNOTATION_CREATED", 3, tasks[2], "7")
    r = c.post("/labelstudio/webhook", json=bad)
    assert r.status_code == 422 and "unknown label" in r.json()["detail"]


def test_unsupported_config_is_a_clear_4xx(app_client: TestClient) -> None:
    r = app_client.post(
        "/labelstudio/setup",
        json={
            "project": "9.1764237600",
            "schema": '<View><Image name="i" value="$image"/><RectangleLabels name="b" '
            'toName="i"><Label value="car"/></RectangleLabels></View>',
        },
    )
    assert r.status_code == 422
    assert r.json()["error"] == "not_supported"
    assert "not supported yet" in r.json()["detail"] and "RectangleLabels" in r.json()["detail"]
    assert app_client.get("/api/v1/tasks").json() == []


def test_media_without_a_known_label_studio_fails_clearly(
    app_client: TestClient, fake_ls: tuple[FakeLabelStudio, list[dict[str, Any]]]
) -> None:
    """Predict without setup: the project is connected from the config it carries, but nobody
    said where Label Studio runs, so its relative media links cannot be read, and the item says so."""
    c = app_client
    _, tasks = fake_ls
    r = c.post("/labelstudio/predict", json=predict_body(tasks[:3]))
    # Nothing can be read: an error Label Studio shows, with the reason (not a silent success).
    assert r.status_code == 422 and "LABELLOOP_LABELSTUDIO_URL" in r.json()["detail"], r.text
    task_id = c.get("/api/v1/tasks").json()[0]["id"]
    wait_until(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["pending"] == 0)
    items = [
        json.loads(line) for line in c.get(f"/api/v1/tasks/{task_id}/export").text.splitlines()
    ]
    detail = c.get(f"/api/v1/tasks/{task_id}/items/{items[0]['item_id']}").json()
    assert detail["status"] == "failed"
    assert "LABELLOOP_LABELSTUDIO_URL" in detail["error"]


def test_basic_auth_with_the_api_token(rt: Runtime) -> None:
    """Label Studio can send only basic auth to a backend: the API token is its password."""
    from pydantic import SecretStr

    from labelloop.api.app import create_app

    rt.settings.api_token = SecretStr("s3cret")
    with TestClient(create_app(rt, manage_jobs=False)) as c:
        assert c.get("/labelstudio/health").status_code == 401
        assert c.get("/labelstudio/health", auth=("labelstudio", "wrong")).status_code == 401
        assert c.get("/labelstudio/health", auth=("labelstudio", "s3cret")).status_code == 200
        assert (
            c.get("/labelstudio/health", headers={"Authorization": "Bearer s3cret"}).status_code
            == 200
        )
        assert c.get("/metrics").status_code == 401


def test_the_token_goes_to_media_paths_only(
    app_client: TestClient,
    fake_ls: tuple[FakeLabelStudio, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Label Studio task whose data names Label Studio's API (or another local address) is not
    taken: no item, an empty result, and no request (with or without the token) leaves labelloop
    for it. Media paths are fetched with the token as before."""
    c = app_client
    server, tasks = fake_ls
    setup(c, server.url)
    hostile = [
        {**tasks[0], "id": 900, "data": {"image": f"{server.url}/api/current-user/token"}},
        {**tasks[1], "id": 901, "data": {"image": "/data/upload/%2e%2e/%2e%2e/api/projects"}},
        {**tasks[2], "id": 902, "data": {"image": "http://127.0.0.2:9/x.png"}},
    ]
    r = c.post("/labelstudio/predict", json=predict_body([*hostile, tasks[3]]))
    assert r.status_code == 200 and r.json()["results"] == [[], [], [], []]
    task_id = c.get("/api/v1/tasks").json()[0]["id"]
    items = [
        json.loads(line) for line in c.get(f"/api/v1/tasks/{task_id}/export").text.splitlines()
    ]
    assert [i["external_id"] for i in items] == [f"ls:{tasks[3]['id']}"]
    wait_until(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["ready"] == 1)
    assert server.auth_seen == [f"Token {TOKEN}"]  # the one media fetch
    assert "is not taken" in caplog.text and TOKEN not in caplog.text
    # An annotation of a task that was not taken is ignored, not a failure.
    event = annotation_event("ANNOTATION_CREATED", 77, hostile[0], "1")
    assert c.post("/labelstudio/webhook", json=event).json()["status"] == "ignored"


# --- the layouts people run: Docker, reverse proxies, personal access tokens ---------------------


def _items(c: TestClient, task_id: int) -> list[dict[str, Any]]:
    lines = c.get(f"/api/v1/tasks/{task_id}/export").text.splitlines()
    return [json.loads(line) for line in lines]


def test_the_operators_url_wins_over_the_one_sent_at_setup(
    app_client: TestClient,
    rt: Runtime,
    fake_ls: tuple[FakeLabelStudio, list[dict[str, Any]]],
) -> None:
    """Label Studio sends the address it knows itself by (LABEL_STUDIO_HOST), which labelloop
    often cannot reach: LABELLOOP_LABELSTUDIO_URL wins, for relative links and for links stored
    absolute under the setup address; the token sent at setup goes with it."""
    c = app_client
    server, tasks = fake_ls
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rt.settings.labelstudio_url = server.url
    task_id = setup(c, unreachable)["task_id"]
    absolute = {**tasks[1], "data": {"image": unreachable + tasks[1]["data"]["image"]}}
    r = c.post("/labelstudio/predict", json=predict_body([tasks[0], absolute]))
    assert r.status_code == 200, r.text
    wait_until(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["ready"] == 2)
    assert [i["data"] for i in _items(c, task_id)] == [
        tasks[0]["data"]["image"],
        tasks[1]["data"]["image"],  # stored relative, however Label Studio sent it
    ]
    assert set(server.auth_seen) == {f"Token {TOKEN}"}


def test_personal_access_tokens_work(
    app_client: TestClient, digit_files: list[tuple[str, str]]
) -> None:
    """Label Studio's default tokens are JWT refresh tokens: exchanged once at
    /api/token/refresh, the access token goes as Bearer; a refused one says what to do."""
    c = app_client
    chosen = digit_files[:3]
    files = {f"/data/upload/1/{Path(p).name}": Path(p).read_bytes() for p, _ in chosen}
    server = FakeLabelStudio(files, pat=True)
    try:
        task_id = setup(c, server.url, token=PAT)["task_id"]
        tasks = [{"id": 300 + n, "data": {"image": path}} for n, path in enumerate(files)]
        r = c.post("/labelstudio/predict", json=predict_body(tasks))
        assert r.status_code == 200, r.text
        wait_until(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["ready"] == 3)
        assert set(server.auth_seen) == {f"Bearer {ACCESS}"}
        assert server.refreshes == 1  # the access token is kept until it nearly expires

        other = jwt({"token_type": "refresh", "exp": 4102444800, "user_id": 2})
        setup(c, server.url, token=other)
        r = c.post(
            "/labelstudio/predict",
            json=predict_body([{"id": 400, "data": {"image": "/data/upload/1/new.png"}}]),
        )
        assert r.status_code == 422, r.text
        assert "did not accept the personal access token" in r.json()["detail"]
    finally:
        server.close()


def test_fetch_failures_are_told(
    app_client: TestClient,
    rt: Runtime,
    fake_ls: tuple[FakeLabelStudio, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When Label Studio cannot be reached: /predict answers an error with the reason, the log
    says it once, /metrics counts every failure by cause, and each item carries its reason (the
    dashboard's unreadable list)."""
    caplog.set_level(logging.WARNING)
    c = app_client
    _, tasks = fake_ls
    dead = f"http://127.0.0.1:{free_port()}"
    rt.settings.fetch_allow_hosts = ["127.0.0.1"]
    task_id = setup(c, dead)["task_id"]
    for batch in (tasks[:3], tasks[3:6]):
        r = c.post("/labelstudio/predict", json=predict_body(batch))
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "fetch_failed"
        assert "the server does not answer" in r.json()["detail"]
    wait_until(lambda: c.get(f"/api/v1/tasks/{task_id}").json()["counts"]["failed"] == 6)
    failed = c.get(f"/api/v1/tasks/{task_id}/items", params={"status": "failed"}).json()
    assert all("does not answer" in (it["error"] or "") for it in failed["items"])
    logged = [r for r in caplog.records if "cannot read data (unreachable)" in r.getMessage()]
    assert len(logged) == 1
    metrics = c.get("/metrics").text
    line = next(x for x in metrics.splitlines() if 'fetch_failures_total{cause="unreachable"}' in x)
    assert float(line.split()[-1]) >= 6


SPANS_CONFIG = (
    '<View><Labels name="ner" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>'
    '<Text name="text" value="$text"/></View>'
)


def test_a_spans_project_takes_span_annotations(app_client: TestClient) -> None:
    """``<Labels>`` on a ``<Text>``: a text-spans task; webhooks carry spans back (and their
    deletion retracts them); before a model, predictions are empty entries."""
    c = app_client
    project = {"id": 8, "title": "ner", "label_config": SPANS_CONFIG}
    r = c.post("/labelstudio/setup", json={"project": "8.1764237600", "schema": SPANS_CONFIG})
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    task = c.get(f"/api/v1/tasks/{task_id}").json()
    assert (task["category"], task["labels"], task["kind"]["widget"]) == (
        "text-spans",
        ["PER", "LOC"],
        "spans",
    )
    ls_task = {"id": 300, "data": {"text": "Ada Lovelace lived in London."}, "project": 8}
    r = c.post(
        "/labelstudio/predict",
        json={"tasks": [ls_task], "project": "8.1764237600", "label_config": SPANS_CONFIG},
    )
    assert r.status_code == 200 and r.json()["results"] == [[]]
    result = [
        {
            "id": f"r{n}",
            "from_name": "ner",
            "to_name": "text",
            "type": "labels",
            "value": {"start": start, "end": end, "text": text, "labels": [label]},
        }
        for n, (start, end, text, label) in enumerate(
            [(22, 28, "London", "LOC"), (0, 12, "Ada Lovelace", "PER")]
        )
    ]
    event = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 900, "result": result, "task": 300, "completed_by": 3},
        "task": ls_task,
        "project": project,
    }
    r = c.post("/labelstudio/webhook", json=event)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    rows = [json.loads(line) for line in c.get(f"/api/v1/tasks/{task_id}/export").text.splitlines()]
    assert rows[0]["spans"] == [
        {"start": 0, "end": 12, "label": "PER"},
        {"start": 22, "end": 28, "label": "LOC"},
    ]
    assert rows[0]["annotator"] == "labelstudio:3"
    # A span past the end of the text is refused, naming it.
    event["annotation"] = {**event["annotation"], "id": 901}  # type: ignore[dict-item]
    event["annotation"]["result"][0]["value"]["end"] = 40  # type: ignore[index]
    r = c.post("/labelstudio/webhook", json=event)
    assert r.status_code == 422 and "ends after the text" in r.json()["detail"]
    r = c.post(
        "/labelstudio/webhook",
        json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 900}], "project": project},
    )
    assert r.status_code == 200 and r.json()["n"] == 1
    item_id = rows[0]["item_id"]
    assert c.get(f"/api/v1/tasks/{task_id}/items/{item_id}").json()["labels"] is None
    # A text submitted with no span is the answer "no entity here"; a cancelled one is no answer.
    none_task = {"id": 301, "data": {"text": "It rained all day."}, "project": 8}
    for n, cancelled in ((902, True), (903, False)):
        empty = {"id": n, "result": [], "task": 301, "completed_by": 3, "was_cancelled": cancelled}
        r = c.post(
            "/labelstudio/webhook",
            json={**event, "annotation": empty, "task": none_task},
        )
        assert r.status_code == 200, r.text
        rows = [
            json.loads(line) for line in c.get(f"/api/v1/tasks/{task_id}/export").text.splitlines()
        ]
        mine = [row for row in rows if row.get("spans") is not None and row["item_id"] != item_id]
        assert mine == ([] if cancelled else [mine[0]]), rows
    assert mine[0]["spans"] == []
