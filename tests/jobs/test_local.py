"""The embedded default's worker pool: separate processes, priorities, recovery after a crash."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from labelloop.api.app import create_app
from labelloop.config import Settings
from labelloop.jobs.local import BULK_NICE, LocalJobs
from labelloop.loop.executor import KINDS
from labelloop.runtime import Runtime
from labelloop.store.models import Job, Task
from tests.support import wait_until

HOST = socket.gethostname()


def test_training_runs_in_worker_processes(
    tmp_path: Path, digit_files: list[tuple[str, str]], image_root: Path
) -> None:
    rt = Runtime(Settings(data_dir=tmp_path / "d", import_roots=[image_root]), migrate_schema=True)
    backend = LocalJobs(rt, workers=2)
    rt.attach_jobs(backend)
    with TestClient(create_app(rt)) as c:
        t = c.post(
            "/api/v1/tasks",
            json={
                "name": "d",
                "category": "image-classification",
                "labels": [str(d) for d in range(10)],
            },
        ).json()["id"]
        items = c.post(
            f"/api/v1/tasks/{t}/items", json={"items": [{"data": p} for p, _ in digit_files[:80]]}
        ).json()["items"]
        for it, (_, label) in zip(items[:30], digit_files, strict=False):
            c.post(
                f"/api/v1/tasks/{t}/annotations",
                json={"annotations": [{"item_id": it["id"], "labels": [label]}]},
            )
        wait_until(lambda: not c.get(f"/api/v1/tasks/{t}").json()["training"], timeout=120)
        assert c.get(f"/api/v1/tasks/{t}").json()["served_version"] is not None
        with rt.session() as s:
            workers = {j.worker for j in s.query(Job).filter(Job.kind == "train")}
        assert workers and None not in workers

        # Every job, featurizing included, says which process ran it and when it started. (The
        # training lane may start training before every item is featurized: the late items are
        # then re-predicted by jobs of their own.)
        def all_done() -> list[dict[str, str]]:
            jobs = c.get(f"/api/v1/tasks/{t}/jobs", params={"limit": 200}).json()
            return jobs if all(j["state"] in ("done", "failed") for j in jobs) else []

        jobs = wait_until(all_done, timeout=120, what="every job over")
        kinds = {j["kind"] for j in jobs}
        assert {"featurize", "train"} <= kinds <= {"featurize", "train", "rescore", "predict"}
        for j in jobs:
            assert j["state"] == "done" and j["started_at"] and j["started_at"] <= j["finished_at"]
            # (a re-prediction a newer version superseded never ran)
            if j["kind"] not in ("predict", "rescore"):
                assert j["worker"] and j["worker"] != f"{HOST}:{os.getpid()}"
        # The jobs ran in other processes than this one (the API's).
        pids = backend.worker_pids()
        assert pids and os.getpid() not in pids
    rt.close()


def test_a_killed_worker_process_runs_its_job_again(
    tmp_path: Path, digit_files: list[tuple[str, str]], image_root: Path
) -> None:
    rt = Runtime(Settings(data_dir=tmp_path / "d", import_roots=[image_root]), migrate_schema=True)
    backend = LocalJobs(rt, workers=1)
    rt.attach_jobs(backend)
    with TestClient(create_app(rt)) as c:
        # Twenty folds make training slow enough to be caught in the middle.
        policy = {"min_labels": 60, "cv_folds": 20}
        t = c.post(
            "/api/v1/tasks",
            json={
                "name": "d",
                "category": "image-classification",
                "labels": [str(d) for d in range(10)],
                "policy": policy,
            },
        ).json()["id"]
        items = c.post(
            f"/api/v1/tasks/{t}/items", json={"items": [{"data": p} for p, _ in digit_files]}
        ).json()["items"]
        wait_until(
            lambda: c.get(f"/api/v1/tasks/{t}").json()["counts"]["pending"] == 0, timeout=120
        )
        annotations = [
            {"item_id": it["id"], "labels": [label]}
            for it, (_, label) in zip(items[:60], digit_files, strict=False)
        ]
        c.post(f"/api/v1/tasks/{t}/annotations", json={"annotations": annotations})

        def running() -> bool:
            with rt.session() as s:
                return s.query(Job).filter(Job.kind == "train", Job.state == "running").count() == 1

        wait_until(running, timeout=60, poll=0.005)
        for pid in backend.worker_pids():
            os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: c.get(f"/api/v1/tasks/{t}").json()["served_version"] is not None, timeout=120
        )
        with rt.session() as s:
            job = s.query(Job).filter(Job.kind == "train").one()
            assert job.state == "done" and job.attempts == 2
        versions = c.get(f"/api/v1/tasks/{t}/models").json()
        assert [v["version"] for v in versions] == [0] and versions[0]["status"] == "ready"
        assert [p.name for p in rt.folder(t).inference.iterdir()] == ["model-time0"]
    rt.close()


def _jobs(rt: Runtime, kinds: list[str]) -> list[int]:
    """Stored jobs of these kinds on one task (their runners are replaced by the test)."""
    with rt.session() as s:
        task = Task(
            name="t",
            category="text-classification",
            extra="multi-class",
            labels=["a", "b"],
            policy={},
            salt="s",
        )
        s.add(task)
        s.flush()
        jobs = [Job(task_id=task.id, kind=k, key=f"{k}:{i}") for i, k in enumerate(kinds)]
        s.add_all(jobs)
        s.flush()
        return [j.id for j in jobs]


def test_a_training_starts_while_bulk_jobs_hold_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bulk worker is inside a long pool prediction and more bulk work waits: a training
    enqueued now starts before any of it ends (the training lane), not after it."""
    rt = Runtime(Settings(data_dir=tmp_path / "d"), migrate_schema=True)
    release_bulk = threading.Event()
    started: list[int] = []
    trained = threading.Event()

    def bulk(rt: Runtime, job_id: int) -> list[int]:
        started.append(job_id)
        assert release_bulk.wait(60)
        return []

    def train(rt: Runtime, job_id: int) -> list[int]:
        started.append(job_id)
        trained.set()
        return []

    monkeypatch.setitem(KINDS, "predict", replace(KINDS["predict"], run=bulk))
    monkeypatch.setitem(KINDS, "train", replace(KINDS["train"], run=train))
    backend = LocalJobs(rt, workers=2, threads=True)
    backend.start()
    try:
        *predicts, training = _jobs(rt, ["predict", "predict", "predict", "train"])
        backend.enqueue(predicts)
        wait_until(lambda: len(started) == 2, what="both bulk workers busy")
        backend.enqueue([training])
        assert trained.wait(30), "the training waited for bulk work"
        # It started while both bulk jobs were still running and the third still waited.
        assert not release_bulk.is_set() and started[2] == training
        assert backend.status()["lanes"]["bulk"] == {"workers": 2, "busy": 2}
        release_bulk.set()
        wait_until(lambda: len(started) == 4, what="the queued bulk job")
    finally:
        release_bulk.set()
        backend.stop()
        rt.close()


def test_featurizing_runs_before_re_predicting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued behind a busy worker, a featurize job overtakes an older pool prediction (which then
    reads the features it stored instead of computing them itself)."""
    rt = Runtime(Settings(data_dir=tmp_path / "d"), migrate_schema=True)
    gate = threading.Event()
    order: list[str] = []

    def runner(kind: str) -> Callable[[Runtime, int], list[int]]:
        def run(rt: Runtime, job_id: int) -> list[int]:
            order.append(kind)
            if len(order) == 1:
                assert gate.wait(60)
            return []

        return run

    for kind in ("predict", "featurize"):
        monkeypatch.setitem(KINDS, kind, replace(KINDS[kind], run=runner(kind)))
    backend = LocalJobs(rt, workers=1, threads=True)
    backend.start()
    try:
        first, predict, featurize = _jobs(rt, ["predict", "predict", "featurize"])
        backend.enqueue([first])
        wait_until(lambda: order, what="the first job running")
        backend.enqueue([predict])
        backend.enqueue([featurize])
        gate.set()
        wait_until(lambda: len(order) == 3, what="all three jobs")
        assert order == ["predict", "featurize", "predict"]
    finally:
        gate.set()
        backend.stop()
        rt.close()


def test_bulk_workers_run_at_a_lower_cpu_priority(tmp_path: Path) -> None:
    """The training lane is a process of its own at the server's priority; bulk workers are
    niced, so a training (and the API) get the cores first."""
    rt = Runtime(Settings(data_dir=tmp_path / "d"), migrate_schema=True)
    backend = LocalJobs(rt, workers=1)
    backend.start()
    try:
        lanes = backend.lane_pids()
        assert len(lanes["train"]) == 1 and len(lanes["bulk"]) == 1
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        # The bulk workers have started (niced) when the start returns; the training worker keeps
        # the server's priority.
        assert os.getpriority(os.PRIO_PROCESS, lanes["bulk"][0]) == min(19, base + BULK_NICE)
        assert os.getpriority(os.PRIO_PROCESS, lanes["train"][0]) == base
        assert sorted(backend.worker_pids()) == sorted(lanes["train"] + lanes["bulk"])
    finally:
        backend.stop()
        rt.close()
