"""Distributed fine-tuning through the real launch path: ``labelloop serve --jobs celery``, one data
and two train workers as separate processes on the machine's RabbitMQ (a vhost of this module's own)
and PostgreSQL. The train workers stand for two machines: each hosts its ranks and rendezvous store
on an address of its own (127.0.0.2, 127.0.0.3). Workers are killed with ``kill -9``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from labelloop.client import Client
from labelloop.store.models import Job, ModelVersion, Prediction
from tests.celery_support import Cluster, pg_database, vhost
from tests.support import wait_until

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.rabbitmq,
    pytest.mark.postgres,
    pytest.mark.timeout(1200),
]

NAMES = ["green", "red"]
TRAIN = {"train-1": "127.0.0.2", "train-2": "127.0.0.3"}
POLICY: dict[str, Any] = {
    "min_labels": 30,
    "cv_folds": 2,
    "learner": "finetune",
    "learner_params": {
        "backbone": {"input_size": 32},
        "epochs": 6,
        "batch_size": 8,
        "lr": 3e-3,
        "patience": 100,
        "budget_s": 600.0,
    },
}
#: A training that lasts (up to 45 s a world, whatever the machine's speed), so that a machine
#: killed after the first checkpoints lands in the middle of it, not after its last epoch.
LASTING: dict[str, Any] = {
    **POLICY,
    "learner_params": {**POLICY["learner_params"], "epochs": 10_000, "budget_s": 45.0},
}


def write_squares(root: Path, n: int = 60) -> list[tuple[str, str]]:
    """Red or green squares on grey noise (as in tests/learners/test_photos.py), as PNG files."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        label = NAMES[i % 2]
        img = rng.integers(90, 110, size=(32, 32, 3)).astype(np.uint8)
        y, x = rng.integers(0, 16, size=2)
        img[y : y + 16, x : x + 16] = (196, 0, 0) if label == "red" else (0, 100, 0)
        path = root / f"{i:03d}.png"
        Image.fromarray(img).save(path)
        out.append((str(path), label))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("squares")
    return root, write_squares(root)


def start_train_worker(c: Cluster, name: str) -> None:
    c.env["LABELLOOP_TRAIN_RDZV_HOST"] = TRAIN[name]
    c.start_worker("train", name)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, images: tuple[Path, list[tuple[str, str]]]
) -> Iterator[tuple[Cluster, Client]]:
    root = tmp_path_factory.mktemp("cluster")
    with vhost("labelloop-ddp") as broker, pg_database() as db:
        c = Cluster(root, broker, db, images[0])
        c.env |= {
            "LABELLOOP_TORCH_THREADS": "1",
            "LABELLOOP_TRAIN_RDZV_PORTS": "29500-29599",
            "LABELLOOP_TRAIN_RANK_TIMEOUT_S": "60",
        }
        try:
            client = c.start_api()
            c.start_worker("data", "data-1")
            for name in TRAIN:
                start_train_worker(c, name)
            c.wait_workers(client, "data-1", *TRAIN)
            yield c, client
        finally:
            c.stop()


@pytest.fixture
def db(cluster: tuple[Cluster, Client]) -> Iterator[Session]:
    engine = create_engine(cluster[0].env["LABELLOOP_DATABASE_URL"])
    with Session(engine) as session:
        yield session
    engine.dispose()


def new_task(
    client: Client, links: list[tuple[str, str]], policy: dict[str, Any] = POLICY
) -> tuple[int, list[int]]:
    # One cluster serves the module's tests, and task names are unique: each gets its own.
    name = f"squares-{uuid.uuid4().hex[:8]}"
    task = client.create_task(name, "image-classification", NAMES, policy=policy)
    items = client.add_items(task["id"], [{"data": p} for p, _ in links])["items"]
    wait_until(lambda: client.get_task(task["id"])["counts"]["pending"] == 0, 180, "featurize jobs")
    return task["id"], [it["id"] for it in items]


def label_all(client: Client, task_id: int, ids: list[int], links: list[tuple[str, str]]) -> int:
    """Label 40 items; returns the training job's id."""
    client.annotate(
        task_id,
        [{"item_id": i, "labels": [y]} for i, (_, y) in zip(ids[:40], links[:40], strict=True)],
    )
    return next(j["id"] for j in client.jobs(task_id) if j["kind"] == "train")


def payload(db: Session, job_id: int) -> dict[str, Any]:
    db.rollback()
    return db.scalar(select(Job.payload).where(Job.id == job_id)) or {}


def training_world(db: Session, job_id: int, data: Path, task_id: int) -> dict[str, Any] | None:
    """The job's world once it has two ranks and rank 0 has written a checkpoint."""
    world = payload(db, job_id).get("world")
    if not world or world["size"] != 2:
        return None
    fit = world["fit"].rsplit("/", 1)[1]  # the distributed fit's own checkpoints
    folder = data / f"task-{task_id}" / "Snapshot"
    return world if any(folder.glob(f"*/{fit}/epoch-1.ckpt")) else None


def one_promoted_version(db: Session, task_id: int) -> ModelVersion:
    db.rollback()
    versions = db.scalars(select(ModelVersion).where(ModelVersion.task_id == task_id)).all()
    assert [(v.status, v.promoted) for v in versions] == [("ready", True)]
    return versions[0]


def test_a_lost_train_machine_leaves_the_world_and_training_resumes(
    cluster: tuple[Cluster, Client], images: tuple[Path, list[tuple[str, str]]], db: Session
) -> None:
    c, client = cluster
    data = Path(c.env["LABELLOOP_DATA_DIR"])
    links = images[1]
    task_id, ids = new_task(client, links, LASTING)
    job_id = label_all(client, task_id, ids, links)
    world = wait_until(lambda: training_world(db, job_id, data, task_id), 400, "a world of two")
    # Both workers run a rank: the job's own worker rank 0, the other rank 1.
    workers = [r["worker"].split("@")[0] for r in world["ranks"]]
    assert sorted(workers) == sorted(TRAIN) and world["rendezvous"].startswith(TRAIN[workers[0]])
    status = client._request("GET", "/api/v1/cluster/workers")
    hosted = {w["name"].split("@")[0]: w.get("ranks", []) for w in status["workers"]}
    assert [r["rank"] for r in hosted[workers[1]]] == [1]  # as `labelloop workers` shows it
    c.kill9(workers[1])  # its machine stops: the worker and its rank process
    try:
        client.wait_for_training(task_id, timeout=400)
        fits = payload(db, job_id)["fits"]
        assert fits[-1]["worlds"] == [2, 1]  # re-formed without the lost machine
        assert fits[-1]["resumed_from_epoch"] >= 1  # from the checkpoint, not from scratch
        mv = one_promoted_version(db, task_id)
        assert mv.metrics["world_sizes"] == [2, 1]
        [job] = [j for j in client.jobs(task_id) if j["kind"] == "train"]
        assert job["state"] == "done" and job["world"]["size"] == 1
    finally:
        start_train_worker(c, workers[1])
        c.wait_workers(client, *TRAIN)


def test_a_job_whose_whole_world_dies_is_redelivered_and_resumes(
    cluster: tuple[Cluster, Client], images: tuple[Path, list[tuple[str, str]]], db: Session
) -> None:
    c, client = cluster
    data = Path(c.env["LABELLOOP_DATA_DIR"])
    links = images[1]
    task_id, ids = new_task(client, links)
    job_id = label_all(client, task_id, ids, links)
    wait_until(lambda: training_world(db, job_id, data, task_id), 400, "a world of two")
    for name in TRAIN:  # every train machine stops: leader, ranks and all
        c.kill9(name)
    assert "fits" not in payload(db, job_id)  # the distributed fit did not finish
    for name in TRAIN:
        start_train_worker(c, name)
    client.wait_for_training(task_id, timeout=400)
    # The redelivered job went on from the dead world's checkpoint, not from epoch 0.
    assert payload(db, job_id)["fits"][-1]["resumed_from_epoch"] >= 1
    one_promoted_version(db, task_id)
    c.wait_workers(client, *TRAIN)


def test_two_tasks_train_at_once_with_their_own_worlds(
    cluster: tuple[Cluster, Client], images: tuple[Path, list[tuple[str, str]]], db: Session
) -> None:
    c, client = cluster
    data = Path(c.env["LABELLOOP_DATA_DIR"])
    links = images[1]
    a, ids_a = new_task(client, links)
    b, ids_b = new_task(client, links)
    flipped = [(p, NAMES[1 - NAMES.index(y)]) for p, y in links]  # task b: the other name
    job_a = label_all(client, a, ids_a, links)
    job_b = label_all(client, b, ids_b, flipped)
    for t in (a, b):
        client.wait_for_training(t, timeout=600)
    # They trained at the same time, each over both machines, in process groups of their own.
    db.rollback()
    jobs = {j: db.get(Job, j) for j in (job_a, job_b)}
    spans = [(job.started_at, job.finished_at) for job in jobs.values() if job is not None]
    assert len(spans) == 2 and max(s for s, _ in spans) < min(f for _, f in spans)
    world_a, world_b = (payload(db, j)["world"] for j in (job_a, job_b))
    assert world_a["size"] == world_b["size"] == 2
    assert world_a["fit"] != world_b["fit"] and world_a["rendezvous"] != world_b["rendezvous"]
    for t, ids, truth in ((a, ids_a, links), (b, ids_b, flipped)):
        one_promoted_version(db, t)
        folder = data / f"task-{t}" / "Inference" / "model-time0"
        assert json.loads((folder / "model" / "learner.json").read_text())["labels"] == NAMES
        # The promoted model's pre-labels of the 20 unlabelled items: its own task's names.
        rows = db.execute(
            select(Prediction.item_id, Prediction.labels).where(Prediction.task_id == t)
        ).all()
        truth_of = {i: y for i, (_, y) in zip(ids, truth, strict=True)}
        assert {i for i, _ in rows} == set(ids[40:])
        right = sum(labels == [truth_of[i]] for i, labels in rows)
        # Of 20: a model of the other task (the names swapped) would get about 20 - right.
        assert right >= 14, right
