"""The embedded default's worker pool: separate processes, priorities, recovery after a crash."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from labelloop.api.app import create_app
from labelloop.config import Settings
from labelloop.jobs.local import LocalJobs
from labelloop.runtime import Runtime
from labelloop.store.models import Job
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

        def jobs_ended() -> list[dict[str, Any]] | None:
            jobs = c.get(f"/api/v1/tasks/{t}/jobs", params={"limit": 200}).json()
            return jobs if all(j["state"] in ("done", "failed") for j in jobs) else None

        # Every job, featurizing included, says which process ran it and when it started (items
        # featurized while the training ran get their pre-labels from a follow-up predict job).
        jobs = wait_until(jobs_ended, 120, "every job to end")
        kinds = {j["kind"] for j in jobs}
        assert {"featurize", "train"} <= kinds <= {"featurize", "train", "predict"}
        for j in jobs:
            assert j["state"] == "done" and j["worker"] and j["worker"] != f"{HOST}:{os.getpid()}"
            assert j["started_at"] and j["started_at"] <= j["finished_at"]
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
