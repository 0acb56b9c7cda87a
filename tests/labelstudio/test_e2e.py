"""Against a real Label Studio (opt-in: ``make e2e-labelstudio`` installs it into ``.venv-ls``).

Label Studio is started on SQLite with a legacy API token, with loopback ML backends allowed; a
project is created and connected to a live labelloop at ``/labelstudio``; annotations are submitted
through Label Studio's API (its webhooks feed labelloop); then Label Studio is asked to retrieve
predictions, and must show labelloop's pre-labels, with their model version, for the other tasks.
The images are uploaded to Label Studio, so labelloop fetches them back with the setup token.
A second project marks spans (``<Labels>`` on ``<Text>``): labelloop makes it a text-spans task,
takes its span annotations and answers spans Label Studio shows as its own.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from labelloop.client import Client
from labelloop.demo import free_port
from labelloop.kinds.spans import entity_scores
from tests.support import wait_until

pytestmark = pytest.mark.labelstudio
ROOT = Path(__file__).resolve().parents[2]
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="digit" toName="image">
    <Choice value="0"/><Choice value="1"/><Choice value="2"/>
  </Choices>
</View>"""


@pytest.fixture
def database_url() -> None:
    """SQLite only: this test is about Label Studio, and it is slow enough once."""
    return None


def label_studio_bin() -> Path:
    path = Path(os.environ.get("LABELSTUDIO_BIN", ROOT / ".venv-ls" / "bin" / "label-studio"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make e2e-labelstudio`, which installs Label Studio")
    return path


@pytest.fixture
def label_studio(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A fresh Label Studio on a free port: (its URL, its API token)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls-data"),
        # The API accepts "Authorization: Token ..." only with this set when the data folder is new.
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Without these, Label Studio refuses an ML backend on a loopback address.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_HOST": url,
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    log = open(tmp_path / "label-studio.log", "wb")  # noqa: SIM115
    cmd = [
        str(label_studio_bin()),
        "start",
        "--no-browser",
        "--port",
        str(port),
        "--username",
        "admin@example.com",
        "--password",
        secrets.token_hex(8),
        "--user-token",
        token,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Label Studio exited: {(tmp_path / 'label-studio.log').read_text()[-2000:]}"
                )
            return httpx.get(f"{url}/health", timeout=2).status_code == 200

        # Label Studio migrates its database first: minutes on a loaded machine.
        wait_until(up, 600, "Label Studio to start", poll=1, ignore=(httpx.HTTPError,))
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def predictions_of(ls: httpx.Client, task_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    return {t: ls.get(f"/api/tasks/{t}").json()["predictions"] for t in task_ids}


def accuracy(
    preds: dict[int, list[dict[str, Any]]], truth: dict[int, str], version: str
) -> tuple[int, float]:
    """How many tasks carry a prediction of ``version``, and how often it is right."""
    mine = {t: [p for p in ps if p["model_version"] == version] for t, ps in preds.items()}
    got = {t: ps[-1] for t, ps in mine.items() if ps}
    right = sum(p["result"][0]["value"]["choices"] == [truth[t]] for t, p in got.items())
    return len(got), (right / len(got) if got else 0.0)


def test_label_studio_shows_labelloop_prelabels(
    label_studio: tuple[str, str], live_url: str, digit_files: list[tuple[str, str]]
) -> None:
    url, token = label_studio
    chosen = [(p, label) for p, label in digit_files if label in ("0", "1", "2")][:60]
    with (
        httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120) as ls,
        Client(live_url) as ll,
    ):
        project = ls.post("/api/projects", json={"title": "digits", "label_config": CONFIG})
        assert project.status_code == 201, project.text
        pid = project.json()["id"]
        # One form field per file: Label Studio keeps one file per field name.
        files = [
            (Path(p).name, (Path(p).name, Path(p).read_bytes(), "image/png")) for p, _ in chosen
        ]
        imported = ls.post(f"/api/projects/{pid}/import", files=files)
        assert imported.status_code == 201, imported.text
        tasks = ls.get("/api/tasks", params={"project": pid, "page_size": 1000}).json()["tasks"]
        assert len(tasks) == len(chosen)
        by_name = {Path(p).name: label for p, label in chosen}
        truth = {}
        for t in tasks:
            uploaded = t["data"]["image"]
            assert uploaded.startswith("/data/upload/")
            # Label Studio prefixes uploads with a short id: "<id>-digit-0007.png".
            truth[t["id"]] = by_name[uploaded.rsplit("/", 1)[1].split("-", 1)[1]]

        # Connect labelloop as the project's ML backend (Label Studio calls /health and /setup).
        ml = ls.post(
            "/api/ml",
            json={"url": f"{live_url}/labelstudio", "project": pid, "title": "labelloop"},
        )
        assert ml.status_code == 201, ml.text
        task = next(t for t in ll.list_tasks() if t["name"] == f"Label Studio project {pid}")
        assert task["labels"] == ["0", "1", "2"] and task["served_version"] is None

        def annotate(ids: list[int]) -> None:
            for tid in ids:
                r = ls.post(
                    f"/api/tasks/{tid}/annotations",
                    json={
                        "result": [
                            {
                                "from_name": "digit",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [truth[tid]]},
                            }
                        ]
                    },
                )
                assert r.status_code == 201, r.text

        def retrieve() -> None:
            r = ls.post(
                "/api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": pid},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
            assert r.status_code == 200, r.text

        ids = sorted(truth)
        first, second, rest = ids[:12], ids[12:30], ids[30:]
        annotate(first)
        wait_until(lambda: ll.get_task(task["id"])["counts"]["human_labelled"] == 12, timeout=60)
        wait_until(lambda: ll.get_task(task["id"])["served_version"] is not None, timeout=180)
        ll.wait_for_training(task["id"])
        v1 = f"model-time{ll.get_task(task['id'])['served_version']}"
        retrieve()
        n1, acc1 = accuracy(predictions_of(ls, rest), truth, v1)
        assert n1 == len(rest), f"Label Studio shows {n1} of {len(rest)} predictions of {v1}"

        # More annotations: a newer version serves, and Label Studio gets its pre-labels too.
        annotate(second)
        wait_until(lambda: ll.get_task(task["id"])["counts"]["human_labelled"] == 30, timeout=60)
        ll.train(task["id"])
        ll.wait_for_training(task["id"])
        served = ll.get_task(task["id"])["served_version"]
        v2 = f"model-time{served}"
        retrieve()
        n2, acc2 = accuracy(predictions_of(ls, rest), truth, v2)
        print(f"\nLabel Studio e2e: {v1} right on {acc1:.0%} of {n1}; {v2} on {acc2:.0%} of {n2}")
        assert v2 != v1 and n2 == len(rest)
        assert acc2 >= 0.8
        # Every prediction Label Studio holds names its model version and has a score.
        for ps in predictions_of(ls, rest).values():
            assert all(p["model_version"].startswith("model-time") for p in ps)
            assert all(p["score"] is not None for p in ps)


SPANS_CONFIG = """<View>
  <Labels name="ner" toName="text">
    <Label value="PER"/><Label value="LOC"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""
PEOPLE = [
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Emmy Noether",
    "Kurt Godel",
    "Marie Curie",
]
PLACES = ["London", "Paris", "Vienna", "Berlin", "Madrid", "Oslo", "Lisbon", "Prague"]
FORMS = [
    "{p} flew to {l} on Monday.",
    "Yesterday {p} gave a talk in {l}.",
    "In {l}, {p} met the committee.",
    "{p} said the weather in {l} was fine.",
    "Nobody expected {n} millimetres of rain.",
]


def span_texts(n: int, seed: int = 0) -> list[tuple[str, list[dict[str, Any]]]]:
    """``n`` different sentences with a person and a place (or neither), and their spans."""
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {}
    while len(out) < n:
        form, person, place = rng.choice(FORMS), rng.choice(PEOPLE), rng.choice(PLACES)
        text = form.format(p=person, l=place, n=rng.randrange(100))
        spans = []
        for name, label in ((person, "PER"), (place, "LOC")):
            if name in text:
                spans.append(
                    {"start": text.index(name), "end": text.index(name) + len(name), "label": label}
                )
        out[text] = sorted(spans, key=lambda x: x["start"])
    return list(out.items())


def test_label_studio_span_project_round_trip(label_studio: tuple[str, str], live_url: str) -> None:
    url, token = label_studio
    examples = span_texts(60)
    with (
        httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120) as ls,
        Client(live_url) as ll,
    ):
        project = ls.post("/api/projects", json={"title": "ner", "label_config": SPANS_CONFIG})
        assert project.status_code == 201, project.text
        pid = project.json()["id"]
        imported = ls.post(f"/api/projects/{pid}/import", json=[{"text": t} for t, _ in examples])
        assert imported.status_code == 201, imported.text
        tasks = ls.get("/api/tasks", params={"project": pid, "page_size": 1000}).json()["tasks"]
        truth = {t["id"]: dict(examples)[t["data"]["text"]] for t in tasks}
        texts = {t["id"]: t["data"]["text"] for t in tasks}

        ml = ls.post(
            "/api/ml", json={"url": f"{live_url}/labelstudio", "project": pid, "title": "labelloop"}
        )
        assert ml.status_code == 201, ml.text
        task = next(t for t in ll.list_tasks() if t["name"] == f"Label Studio project {pid}")
        assert (task["category"], task["labels"]) == ("text-spans", ["PER", "LOC"])

        ids = sorted(truth)
        labelled, rest = ids[:30], ids[30:]
        for tid in labelled:
            result = [
                {
                    "from_name": "ner",
                    "to_name": "text",
                    "type": "labels",
                    "value": {
                        "start": x["start"],
                        "end": x["end"],
                        "text": texts[tid][x["start"] : x["end"]],
                        "labels": [x["label"]],
                    },
                }
                for x in truth[tid]
            ]
            r = ls.post(f"/api/tasks/{tid}/annotations", json={"result": result})
            assert r.status_code == 201, r.text
        # The webhooks carried the spans back as human labels.
        wait_until(lambda: ll.get_task(task["id"])["counts"]["human_labelled"] == 30, timeout=60)
        items = {it["data"]: it for it in ll.list_items(task["id"], limit=100)["items"]}
        first = items[texts[labelled[0]]]
        assert ll.get_item(task["id"], first["id"])["labels"] == truth[labelled[0]]

        ll.train(task["id"])
        ll.wait_for_training(task["id"])
        served = ll.get_task(task["id"])["served_version"]
        assert served is not None
        version = f"model-time{served}"
        r = ls.post(
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": pid},
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        assert r.status_code == 200, r.text
        shown: dict[int, list[dict[str, Any]]] = {}
        for tid, preds in predictions_of(ls, rest).items():
            mine = [p for p in preds if p["model_version"] == version]
            assert mine, f"Label Studio shows no prediction of {version} for task {tid}"
            results = mine[-1]["result"]
            for res in results:
                assert (res["from_name"], res["to_name"], res["type"]) == ("ner", "text", "labels")
                value = res["value"]
                assert value["text"] == texts[tid][value["start"] : value["end"]]
                assert res["score"] is not None
            shown[tid] = [
                {
                    "start": x["value"]["start"],
                    "end": x["value"]["end"],
                    "label": x["value"]["labels"][0],
                }
                for x in results
            ]
        f1 = entity_scores([shown[t] for t in rest], [truth[t] for t in rest])["f1"]
        print(f"\nLabel Studio spans e2e: {version} entity F1 {f1:.0%} on {len(rest)} texts")
        assert f1 >= 0.8
