"""``serve --processes N`` (labelloop.prefork): N forked API processes on one socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
from fastapi import FastAPI

from labelloop.demo import free_port
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[1]


def pid_app() -> FastAPI:
    """An app that says which process answered."""
    app = FastAPI()

    @app.get("/pid")
    def pid() -> dict[str, Any]:
        return {"pid": os.getpid(), "parent": os.getppid()}

    return app


def broken_app() -> FastAPI:
    raise RuntimeError("this app cannot be built")


def serve(factory: str, port: int, processes: int) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from labelloop.prefork import serve_forked; "
        f"sys.exit(serve_forked({factory!r}, '127.0.0.1', {port}, {processes}))"
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


def answer(url: str) -> dict[str, Any] | None:
    try:
        got: dict[str, Any] = httpx.get(url, timeout=5).json()
        return got
    except httpx.HTTPError:
        return None


def test_forked_processes_serve_are_replaced_and_stop_together() -> None:
    port = free_port()
    parent = serve("tests.test_prefork:pid_app", port, 2)
    url = f"http://127.0.0.1:{port}/pid"
    try:
        got = wait_until(lambda: answer(url), 60, "a forked API process answering")
        wait_until(lambda: len(psutil.Process(parent.pid).children()) == 2, 30, "two processes")
        children = psutil.Process(parent.pid).children()
        assert got["parent"] == parent.pid and got["pid"] in {c.pid for c in children}

        os.kill(children[0].pid, signal.SIGKILL)  # a process that dies is replaced
        wait_until(
            lambda: {c.pid for c in psutil.Process(parent.pid).children()} - {children[0].pid},
            30,
            "a replacement",
        )
        wait_until(
            lambda: len(psutil.Process(parent.pid).children()) == 2, 30, "two processes again"
        )
        wait_until(lambda: answer(url), 30, "an answer after the replacement")
    finally:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 0
    assert answer(url) is None


def test_an_app_that_cannot_start_ends_the_parent_with_uvicorns_startup_failure() -> None:
    parent = serve("tests.test_prefork:broken_app", free_port(), 2)
    try:
        assert parent.wait(timeout=120) == 3
    finally:
        if parent.poll() is None:
            parent.kill()
