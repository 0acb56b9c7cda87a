"""The assist loop on Celery workers, for real: ``labelloop serve --jobs celery`` with one data, two
train and two inference workers as separate processes, on the machine's RabbitMQ (a vhost of this
module's own) and PostgreSQL. Workers are killed with ``kill -9`` in the middle of their work."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from labelloop.client import ApiError, Client, ClientError
from labelloop.config import Settings
from labelloop.demo import write_digits
from labelloop.jobs.celery_backend import CeleryJobs
from labelloop.runtime import Runtime
from labelloop.store.models import Annotation, Item, Job, ModelVersion, Task
from tests.celery_support import HOST, Cluster, pg_database, vhost
from tests.support import wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

DIGITS = [str(d) for d in range(10)]
WORKERS = [
    ("data", "data-1"),
    ("train", "train-1"),
    ("train", "train-2"),
    ("inference", "inference-1"),
    ("inference", "inference-2"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("images")
    return root, [(str(p), label) for p, label in write_digits(root)]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, images: tuple[Path, list[tuple[str, str]]]
) -> Iterator[tuple[Cluster, Client]]:
    root = tmp_path_factory.mktemp("cluster")
    with vhost("labelloop-test") as broker, pg_database() as db:
        c = Cluster(root, broker, db, images[0])
        try:
            client = c.start_api()
            for role, name in WORKERS:
                c.start_worker(role, name)
            c.wait_workers(client, *(name for _, name in WORKERS))
            yield c, client
        finally:
            c.stop()


@pytest.fixture
def db(cluster: tuple[Cluster, Client]) -> Iterator[Session]:
    """The cluster's store, read directly (what the API does not show: promotions, attempts)."""
    engine = create_engine(cluster[0].env["LABELLOOP_DATABASE_URL"])
    with Session(engine) as session:
        yield session
    engine.dispose()


def new_task(client: Client, links: list[tuple[str, str]], **policy: Any) -> tuple[int, list[int]]:
    """A digits task over ``links``, its items featurized by the data worker."""
    # One cluster serves the module's tests, and task names are unique: each gets its own.
    name = f"digits-{uuid.uuid4().hex[:8]}"
    task = client.create_task(name, "image-classification", DIGITS, policy=policy or None)
    items = client.add_items(task["id"], [{"data": p} for p, _ in links])["items"]
    wait_until(lambda: client.get_task(task["id"])["counts"]["pending"] == 0, 180, "featurize jobs")
    return task["id"], [it["id"] for it in items]


def job_state(db: Session, job_id: int) -> str | None:
    db.rollback()  # a new transaction: see what the workers committed since
    return db.scalar(select(Job.state).where(Job.id == job_id))


def label(client: Client, task_id: int, pairs: list[tuple[int, str]]) -> dict[str, Any]:
    return client.annotate(task_id, [{"item_id": i, "labels": [y]} for i, y in pairs])


def test_workers_are_listed_with_roles_and_queues(cluster: tuple[Cluster, Client]) -> None:
    c, client = cluster
    status = client._request("GET", "/api/v1/cluster/workers")
    assert status["backend"] == "celery" and status["broker_ok"] is True
    assert "guest:guest" not in json.dumps(status)  # the broker's password never shows
    workers = {w["name"]: w for w in status["workers"]}
    for role, name in WORKERS:
        w = workers[f"{name}@{HOST}"]
        assert w["roles"] == [role] and w["queues"] == [role]
        assert w["pid"] == c.workers[name].pid
    assert workers[f"train-1@{HOST}"]["prefetch"] == 1
    assert set(status["queues"]) == {"data", "train", "inference", "dead"}
    # A worker answers the broadcast a moment before its consumer is on the task queue.
    expected = {"train": 2, "inference": 2, "data": 1}

    def consumers() -> dict[str, int] | None:
        queues = client._request("GET", "/api/v1/cluster/workers")["queues"]
        got = {q: queues[q]["consumers"] for q in expected}
        return got if got == expected else None

    wait_until(consumers, 30, f"consumers {expected} on the queues", poll=0.5)


def test_a_job_that_raises_ends_failed_on_the_workers(
    cluster: tuple[Cluster, Client], images: tuple[Path, list[tuple[str, str]]], db: Session
) -> None:
    c, client = cluster
    task_id = client.create_task("crash", "image-classification", DIGITS)["id"]
    # A learner that cannot be built (a stored parameter that is not a number), an item and its
    # featurize job: the job raises on the data worker after claiming the item.
    db.execute(
        update(Task)
        .where(Task.id == task_id)
        .values(policy={"learner": "pool-svm", "learner_params": {"image_size": "not a number"}})
    )
    item = Item(task_id=task_id, data=images[1][0][0])
    db.add(item)
    db.flush()
    job = Job(
        task_id=task_id, kind="featurize", key=f"crash:{item.id}", payload={"item_ids": [item.id]}
    )
    db.add(job)
    db.commit()
    rt = Runtime(
        Settings(
            broker_url=c.env["LABELLOOP_BROKER_URL"],
            database_url=c.env["LABELLOOP_DATABASE_URL"],
            data_dir=Path(c.env["LABELLOOP_DATA_DIR"]),
            jobs="celery",
        )
    )
    backend = CeleryJobs(rt)
    try:
        backend.enqueue([job.id])
    finally:
        backend.stop()
        rt.close()
    wait_until(lambda: job_state(db, job.id) in ("done", "failed"), 120, "the job to end")
    db.refresh(job)
    db.refresh(item)
    assert job.state == "failed" and job.error and "image_size" in job.error
    assert job.worker == f"data-1@{HOST}" and job.started_at is not None and job.attempts == 1
    assert item.status == "failed" and item.error and "featurizing failed" in item.error


def test_whole_loop_on_workers(
    cluster: tuple[Cluster, Client], images: tuple[Path, list[tuple[str, str]]], db: Session
) -> None:
    c, client = cluster
    links = images[1][:300]
    task_id, item_ids = new_task(client, links, min_labels=10)
    truth = {i: links[n][1] for n, i in enumerate(item_ids)}
    assert client.prediction(task_id, item_ids[0])["status"] == "no_model"

    # The featurize jobs ran on the data worker (the API runs no jobs in this mode).
    jobs = client.jobs(task_id, limit=200)
    assert jobs and all(j["kind"] == "featurize" and j["state"] == "done" for j in jobs)
    assert all(j["worker"] == f"data-1@{HOST}" for j in jobs)  # each job says who ran it
    assert all(j["started_at"] and j["started_at"] <= j["finished_at"] for j in jobs)
    db.rollback()
    assert None not in db.scalars(select(Job.started_at).where(Job.task_id == task_id)).all()
    wait_until(
        lambda: c.live_workers(client)[f"data-1@{HOST}"]["processed"] >= len(jobs),
        30,
        "the data worker to report its jobs",
        poll=0.5,
    )

    # A stream of predictions runs beside the labelling: none may answer with a version older
    # than the one served when it was sent (a promotion is visible from the next request on).
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    errors: list[str] = []

    def stream() -> None:
        with Client(c.url, timeout=60) as cl:
            while not stop.is_set():
                served = cl.get_task(task_id)["served_version"]
                if served is None:
                    stop.wait(0.05)  # pacing, not synchronisation
                    continue
                try:
                    got = cl.predict(task_id, [links[-1][0]])
                except ClientError as exc:
                    errors.append(str(exc))
                    continue
                seen.append((served, got["model_version"]))
                stop.wait(0.02)

    watcher = threading.Thread(target=stream, daemon=True)
    watcher.start()
    try:
        by_class: dict[str, int] = {}
        for i in item_ids:
            by_class.setdefault(truth[i], i)
        seeds = list(by_class.values())
        for n, i in enumerate(seeds, start=1):
            assert label(client, task_id, [(i, truth[i])])["training_triggered"] is (n == 10)
        task = client.wait_for_training(task_id, timeout=300)
        assert task["served_version"] == 0
        rest = [i for i in item_ids if i not in seeds]
        for i in rest[:60]:
            if label(client, task_id, [(i, truth[i])])["training_triggered"]:
                client.wait_for_training(task_id, timeout=300)
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert not errors, errors[:3]
    assert seen and all(answered >= served for served, answered in seen)

    versions = client.models(task_id)
    assert len(versions) >= 5
    serving = [v for v in versions if v["serving"]]
    assert len(serving) == 1 and serving[0]["version"] > 0
    served = serving[0]["version"]
    assert all(v["status"] in ("ready", "pruned") for v in versions)  # pruned: retention
    # Promotions happened by compare-and-set, once per promoted version.
    row = db.get(Task, task_id)
    assert row is not None
    promoted = db.scalars(
        select(ModelVersion).where(ModelVersion.task_id == task_id, ModelVersion.promoted)
    ).all()
    assert row.promotions == len(promoted) >= 2

    # Pre-labels of stored items come from the served version (through the inference workers).
    sample = rest[100:140]
    right = 0
    for i in sample:
        p = client.prediction(task_id, i)
        assert p["status"] == "ok" and p["model_version"] == served
        right += p["labels"] == [truth[i]]
    assert right >= 0.7 * len(sample)
    nxt = client.next_items(task_id, limit=10)
    assert nxt["model_version"] == served
    assert all(it["prediction"]["model_version"] == served for it in nxt["items"])

    # Data links that are not stored items: the inference RPC, with a clear per-item error.
    got = client.predict(task_id, [links[-2][0], str(images[0] / "missing.png")])
    assert got["model_version"] == served
    assert got["predictions"][0]["status"] == "ok"
    assert got["predictions"][1]["status"] == "failed" and got["predictions"][1]["error"]

    # A rollback re-predicts the pool with the version it serves, as batched jobs on the
    # inference queue (to the oldest version retention kept).
    back = min(v["version"] for v in versions if v["status"] == "ready" and not v["serving"])
    client.promote(task_id, back)
    wait_until(
        lambda: (
            all(
                j["state"] == "done"
                for j in client.jobs(task_id, limit=500)
                if j["kind"] == "predict"
            )
            and any(j["kind"] == "predict" for j in client.jobs(task_id, limit=500))
        ),
        120,
        "re-prediction jobs",
    )
    assert client.prediction(task_id, rest[-1])["model_version"] == back
    client.promote(task_id, served)


def test_two_tasks_train_at_once_on_different_workers(
    cluster: tuple[Cluster, Client], images: tuple[Path, list[tuple[str, str]]], db: Session
) -> None:
    c, client = cluster
    links = images[1][:400]
    # Slow enough (20 folds, many spreading iterations) for the two jobs to overlap.
    policy = {
        "min_labels": 100,
        "cv_folds": 20,
        "learner": "pool-svm",
        "learner_params": {"iterations": 2500},
    }
    a, items_a = new_task(client, links, **policy)
    b_task = client.create_task("parity", "image-classification", ["even", "odd"], policy=policy)
    b = b_task["id"]
    items_b = [it["id"] for it in client.add_items(b, [{"data": p} for p, _ in links])["items"]]
    wait_until(lambda: client.get_task(b)["counts"]["pending"] == 0, 180, "featurize jobs")

    def parity(y: str) -> str:
        return "even" if int(y) % 2 == 0 else "odd"

    label(client, a, [(i, links[n][1]) for n, i in enumerate(items_a[:100])])
    label(client, b, [(i, parity(links[n][1])) for n, i in enumerate(items_b[:100])])
    train_jobs = {t: next(j["id"] for j in client.jobs(t) if j["kind"] == "train") for t in (a, b)}

    # Both jobs run at the same time, each on its own train worker.
    def both_running() -> dict[int, str] | None:
        where = {
            act["job_id"]: name
            for name, w in c.live_workers(client).items()
            for act in w["active"]
            if act.get("job_id") in train_jobs.values()
        }
        return where if len(where) == 2 else None

    where = wait_until(both_running, 120, "two training jobs running at once", poll=0.2)
    assert set(where.values()) == {f"train-1@{HOST}", f"train-2@{HOST}"}
    for t in (a, b):
        client.wait_for_training(t, timeout=300)

    # Each model saw its own task's labels and items only.
    data = Path(c.env["LABELLOOP_DATA_DIR"])
    for t, items, labels in ((a, items_a, DIGITS), (b, items_b, ["even", "odd"])):
        assert client.get_task(t)["served_version"] == 0
        folder = data / f"task-{t}" / "Inference" / "model-time0"
        assert json.loads((folder / "model" / "learner.json").read_text())["labels"] == labels
        import numpy as np

        trained_on = set(np.load(folder / "oos.npz")["item_ids"].tolist())
        assert trained_on == set(items[:100])
        mv = db.scalar(select(ModelVersion).where(ModelVersion.task_id == t))
        assert mv is not None and mv.n_labels == 100
    # Same version number on both tasks, same images: each answers with its own model.
    sample = links[200:240]
    got_a = client.predict(a, [p for p, _ in sample])["predictions"]
    got_b = client.predict(b, [p for p, _ in sample])["predictions"]
    assert all(g["labels"][0] in DIGITS for g in got_a)
    assert all(g["labels"][0] in ("even", "odd") for g in got_b)
    assert sum(g["labels"] == [y] for g, (_, y) in zip(got_a, sample, strict=True)) >= 30
    assert sum(g["labels"] == [parity(y)] for g, (_, y) in zip(got_b, sample, strict=True)) >= 30


def test_kill_9_of_an_inference_worker_under_a_stream_of_predictions(
    cluster: tuple[Cluster, Client], images: tuple[Path, list[tuple[str, str]]]
) -> None:
    c, client = cluster
    links = images[1][:200]
    task_id, item_ids = new_task(client, links, min_labels=30)
    label(client, task_id, [(i, links[n][1]) for n, i in enumerate(item_ids[:30])])
    client.wait_for_training(task_id, timeout=300)
    served = client.get_task(task_id)["served_version"]
    probes = [p for p, _ in links[100:140]]
    # What the served model answers for each probe, before anything is killed.
    reference = {
        p: g["labels"]
        for p, g in zip(probes, client.predict(task_id, probes)["predictions"], strict=False)
    }

    stop = threading.Event()
    killed_at: list[float] = []
    results: list[tuple[float, float, str, Any]] = []  # (sent, answered, outcome, detail)

    def stream(offset: int) -> None:
        n = offset
        with Client(c.url, timeout=60) as cl:
            while not stop.is_set():
                probe = probes[n % len(probes)]
                n += 1
                sent = time.monotonic()
                try:
                    got = cl.predict(task_id, [probe])
                    pred = got["predictions"][0]
                    ok = got["model_version"] == served and pred["labels"] == reference[probe]
                    results.append((sent, time.monotonic(), "ok" if ok else "wrong", got))
                except ApiError as exc:
                    results.append((sent, time.monotonic(), "error", (exc.status, exc.detail)))

    threads = [threading.Thread(target=stream, args=(k * 7,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    # The stream runs through both workers before one of them dies...
    wait_until(lambda: len(results) > 10, 120, "predictions before the kill")
    before = len(results)
    killed_at.append(time.monotonic())
    c.kill9("inference-1")

    # ...and goes on through the other one: more than ten answers sent a second after the kill.
    def after_kill() -> bool:
        return len([r for r in list(results) if r[0] > killed_at[0] + 1.0]) > 10

    wait_until(after_kill, 120, "predictions after the kill")
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert before > 10
    wrong = [r for r in results if r[2] == "wrong"]
    assert not wrong, wrong[:3]
    failed = [r for r in results if r[2] == "error"]
    # At most the requests in flight at the moment of the kill fail, and they say why.
    assert len(failed) <= len(threads), failed
    for _, _, _, (status, detail) in failed:
        assert status in (503, 504) and "inference worker" in detail
    # The stream went on through the other worker.
    after = [r for r in results if r[0] > killed_at[0] + 1.0]
    assert len(after) > 10 and all(r[2] == "ok" for r in after)
    live = c.live_workers(client)
    assert f"inference-1@{HOST}" not in live and f"inference-2@{HOST}" in live

    c.start_worker("inference", "inference-1")
    c.wait_workers(client, "inference-1")


def test_kill_9_of_a_train_worker_in_the_middle_of_training(
    cluster: tuple[Cluster, Client], images: tuple[Path, list[tuple[str, str]]], db: Session
) -> None:
    c, client = cluster
    links = images[1][:600]
    # Slow training (20 folds, many spreading iterations) so that the kill lands in the middle.
    policy = {
        "min_labels": 150,
        "cv_folds": 20,
        "learner": "pool-svm",
        "learner_params": {"iterations": 4000},
    }
    task_id, item_ids = new_task(client, links, **policy)
    truth = {i: links[n][1] for n, i in enumerate(item_ids)}
    label(client, task_id, [(i, truth[i]) for i in item_ids[:150]])
    client.wait_for_training(task_id, timeout=300)
    assert client.get_task(task_id)["served_version"] == 0

    # The next training job (growth), watched until a train worker holds it.
    answer = label(client, task_id, [(i, truth[i]) for i in item_ids[150:200]])
    job_id = answer["training_job"]
    assert job_id is not None

    def claimed_by() -> str | None:
        db.rollback()
        job = db.get(Job, job_id, populate_existing=True)
        return job.worker if job is not None and job.state == "running" else None

    first = wait_until(claimed_by, 120, "the training job claimed by a train worker", poll=0.05)
    assert first in {f"train-1@{HOST}", f"train-2@{HOST}"}
    victim = first.split("@")[0]
    survivor = "train-2" if victim == "train-1" else "train-1"

    # Labels keep arriving and predictions keep being asked for while the worker dies.
    stop = threading.Event()
    answers: list[tuple[int | None, str]] = []
    posted = list(item_ids[200:260])

    def annotate() -> None:
        with Client(c.url, timeout=60) as cl:
            for i in posted:
                cl.annotate(task_id, [{"item_id": i, "labels": [truth[i]]}])
                stop.wait(0.05)  # pacing: labels keep arriving over the rerun

    def predict() -> None:
        with Client(c.url, timeout=60) as cl:
            while not stop.is_set():
                try:
                    got = cl.predict(task_id, [links[-1][0]])
                    answers.append((got["model_version"], got["predictions"][0]["status"]))
                except ClientError as exc:
                    answers.append((None, str(exc)))

    # Claimed means running: the job dies in its middle (it checkpoints only after fitting).
    c.kill9(victim)
    threads = [threading.Thread(target=f, daemon=True) for f in (annotate, predict)]
    for t in threads:
        t.start()

    # Redelivered to the other train worker (prefetch 1: nothing else holds it). The store says
    # who claimed it last: a rerun that resumes from the checkpoint can end between two polls.
    def rerun_by() -> str | None:
        db.rollback()
        job = db.get(Job, job_id, populate_existing=True)
        return job.worker if job is not None and job.attempts >= 2 else None

    rerun = wait_until(rerun_by, 120, "the training job redelivered", poll=0.2)
    assert rerun == f"{survivor}@{HOST}"
    threads[0].join(timeout=120)
    client.wait_for_training(task_id, timeout=600)
    stop.set()
    threads[1].join(timeout=60)

    db.rollback()
    job = db.get(Job, job_id, populate_existing=True)
    assert job is not None and job.state == "done" and job.attempts == 2
    mv = db.scalar(select(ModelVersion).where(ModelVersion.job_key == job.key))
    assert mv is not None and mv.version == 1 and mv.status == "ready"
    task = db.get(Task, task_id, populate_existing=True)
    assert task is not None
    promoted = db.scalars(
        select(ModelVersion.version).where(ModelVersion.task_id == task_id, ModelVersion.promoted)
    ).all()
    assert task.promotions == len(promoted)  # each promoted version promoted exactly once
    assert mv.promoted and job.result is not None and job.result["promoted"] is True

    # Served model: the old or the new one, never a partial one.
    assert answers and all(status == "ok" for _, status in answers), answers[:5]
    assert {v for v, _ in answers} <= {0, 1, 2, 3}
    inference = Path(c.env["LABELLOOP_DATA_DIR"]) / f"task-{task_id}" / "Inference"
    for folder in inference.glob("model-time*"):
        assert (folder / "model" / "learner.json").is_file()
        assert (folder / "model" / "state.joblib").is_file()
        assert (folder / "metrics.json").is_file() and (folder / "oos.npz").is_file()

    # No label lost: every label is stored, and the next model trains on all of them.
    n_labels = 200 + len(posted)
    humans = db.scalars(
        select(Annotation.item_id).where(
            Annotation.task_id == task_id, Annotation.source == "human"
        )
    ).all()
    assert sorted(humans) == sorted(item_ids[:n_labels])
    client.train(task_id)
    client.wait_for_training(task_id, timeout=600)
    newest = max(client.models(task_id), key=lambda v: v["version"])
    assert newest["n_labels"] == n_labels

    c.start_worker("train", victim)
    c.wait_workers(client, victim)
