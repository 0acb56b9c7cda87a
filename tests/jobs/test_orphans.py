"""``labelloop serve`` and its worker processes live and die together, and own their data folder.

Real servers in their own sessions: a ``kill -9`` takes the workers (and multiprocessing's resource
tracker) along, a second server on the same folder is refused, workers left over by a server that
could not take them along are stopped at the next start, and SIGTERM stops a server at once even
while a job runs (the job runs again at the next start, the attempt not counted).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from labelloop.config import Settings
from labelloop.jobs.guard import RUN_DIR
from labelloop.jobs.local import LocalJobs
from labelloop.runtime import Runtime
from tests.support import Server, wait_until

DIGITS = [str(d) for d in range(10)]


def gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        with suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
    return True


@pytest.fixture
def servers(tmp_path: Path, image_root: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def start(servers: list[Server], data: Path, image_root: Path) -> Server:
    server = Server(data, {"LABELLOOP_IMPORT_ROOTS": str(image_root)})
    servers.append(server)
    return server


def test_kill_9_of_the_server_takes_its_workers_along(
    tmp_path: Path, image_root: Path, servers: list[Server]
) -> None:
    server = start(servers, tmp_path / "data", image_root)
    server.up()
    children = server.children()
    workers = [p for p in children if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(workers) == 3  # two bulk workers (the default) and the training lane's
    assert any("resource_tracker" in " ".join(p.cmdline()) for p in children)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=30)
    wait_until(lambda: gone(children), 30, "the workers and the resource tracker to end")

    # The next server on the folder starts as usual.
    again = start(servers, tmp_path / "data", image_root)
    again.up()
    assert "left running" not in again.output()


def test_a_second_server_on_the_same_data_folder_is_refused(
    tmp_path: Path, image_root: Path, servers: list[Server]
) -> None:
    first = start(servers, tmp_path / "data", image_root)
    first.up()
    second = start(servers, tmp_path / "data", image_root)
    assert second.proc.wait(timeout=120) == 2
    out = second.output()
    assert f"another labelloop server (pid {first.proc.pid}) is running" in out
    assert "Traceback" not in out
    first.up().health()  # the first one is unharmed


def test_a_start_stops_workers_a_dead_server_left_running(tmp_path: Path, image_root: Path) -> None:
    data = tmp_path / "data"
    run = data / RUN_DIR
    run.mkdir(parents=True)
    # A worker that outlived its server (as on a system without a parent-death signal).
    code = (
        "import sys, time; from pathlib import Path; "
        "from labelloop.jobs.guard import register_worker; "
        "register_worker(Path(sys.argv[1])); print('ready', flush=True); time.sleep(600)"
    )
    orphan = subprocess.Popen(
        [sys.executable, "-c", code, str(run)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert orphan.stdout is not None and orphan.stdout.readline() == b"ready\n"
        (run / "worker-999999.lock").write_text("999999\n")  # a dead one's file
        rt = Runtime(Settings(data_dir=data, import_roots=[image_root]), migrate_schema=True)
        backend = LocalJobs(rt, workers=1)
        assert orphan.wait(timeout=30) == -signal.SIGKILL
        assert not (run / "worker-999999.lock").exists()
        assert not (run / f"worker-{orphan.pid}.lock").exists()
        backend.stop()
        rt.close()
    finally:
        with suppress(ProcessLookupError):
            orphan.kill()


def test_sigterm_stops_the_server_at_once_while_a_job_runs(
    tmp_path: Path,
    image_root: Path,
    digit_files: list[tuple[str, str]],
    servers: list[Server],
) -> None:
    data = tmp_path / "data"
    server = start(servers, data, image_root)
    client = server.up()
    # Label spreading that would run for hours: the job is running whenever the stop comes.
    policy = {"min_labels": 10, "learner": "pool-svm", "learner_params": {"iterations": 10_000_000}}
    task = client.create_task("slow", "image-classification", DIGITS, policy=policy)["id"]
    items = client.add_items(task, [{"data": p} for p, _ in digit_files[:40]])["items"]
    wait_until(lambda: client.get_task(task)["counts"]["pending"] == 0, 120, "featurizing")
    seeds: dict[str, int] = {}
    for it, (_, y) in zip(items, digit_files, strict=False):
        seeds.setdefault(y, it["id"])
    client.annotate(task, [{"item_id": i, "labels": [y]} for y, i in seeds.items()])

    def running() -> dict[str, object] | None:
        jobs = [j for j in client.jobs(task) if j["kind"] == "train"]
        return jobs[0] if jobs and jobs[0]["state"] == "running" else None

    job = wait_until(running, 120, "the training job to run", poll=0.1)
    children = server.children()
    os.kill(server.proc.pid, signal.SIGTERM)
    # uvicorn ends by raising the signal it caught again, once its shutdown is over.
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM), server.output()
    wait_until(lambda: gone(children), 30, "the worker processes to end")
    out = server.output()
    assert "leaked semaphore" not in out and "Traceback" not in out, out
    assert f"stopped while running jobs [{job['id']}]" in out, out

    # The job was abandoned, not finished, and its attempt does not count; it runs again.
    again = start(servers, data, image_root)
    client = again.up()

    def rerun() -> dict[str, object] | None:
        jobs = [j for j in client.jobs(task) if j["id"] == job["id"]]
        return jobs[0] if jobs[0]["state"] == "running" else None

    assert wait_until(rerun, 120, "the job to run again", poll=0.1)["attempts"] == 1
