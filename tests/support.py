"""Helpers tests import (``conftest.py`` holds fixtures only and is never imported as a module).

:func:`wait_until` is the one way tests wait: poll a condition on state until it holds, with a
deadline. Tests never sleep a fixed time to let something happen; they wait for the state that
shows it happened (a job's row, a worker's answer, a file), so they are as fast as the machine
allows and still pass on a slow one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import psutil

from labelloop.client import Client, ClientError
from labelloop.demo import free_port

T = TypeVar("T")

#: The machine's PostgreSQL (trust authentication); tests create databases of their own on it.
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _pg_admin_connect() -> Any:
    import psycopg  # only tests that use PostgreSQL need the driver

    return psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
    )


@contextmanager
def pg_database(template: str | None = None) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; yields its URL.

    ``template`` names a database to copy (an already migrated one: see
    :func:`migrated_pg_template`); without it the database is empty.
    """
    name = f"labelloop_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with _pg_admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def migrated_pg_template() -> Iterator[str]:
    """A PostgreSQL database at the newest schema, to copy (``CREATE DATABASE ... TEMPLATE``):
    the tests that take a store copy it instead of running every migration again. Yields its name.

    The migrations themselves run here, and from an empty database in tests/store/test_migrations.py.
    """
    from labelloop.store.db import migrate

    with pg_database() as url:
        migrate(url)  # disposes of its engine: a template must have no open connection
        yield url.rsplit("/", 1)[-1]


def migrated_sqlite_template(folder: Path) -> Path:
    """A SQLite store file at the newest schema in ``folder``, to copy into a test's data folder
    (what :func:`migrated_pg_template` is for PostgreSQL)."""
    from labelloop.store.db import migrate

    path = folder / "labelloop.db"
    migrate(f"sqlite:///{path}")
    return path


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    what: str = "condition",
    poll: float = 0.02,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` after ``timeout``.

    Exceptions of the ``ignore`` types count as "not yet" (a server that is still starting).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            value, last = None, exc  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last})" if last is not None else ""
            raise AssertionError(f"{what}: not met within {timeout:g} s{detail}")
        time.sleep(poll)


def terminate(proc: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """SIGTERM a process started in its own session, then SIGKILL what is left of its group
    (pool processes too, whatever happened to the main one)."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class Server:
    """``labelloop serve`` on a data folder (two local workers), in a session of its own."""

    def __init__(
        self, data: Path, env: dict[str, str] | None = None, args: Sequence[str] = ()
    ) -> None:
        self.data = data
        self.port = free_port()
        self.log = data.parent / f"serve-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "LABELLOOP_DATA_DIR": str(data),
            "LABELLOOP_LOCAL_WORKERS": "2",
            # One API process (serve's "auto" would start two on a multi-core Linux machine):
            # the tests' time and memory; a test that wants more passes --processes.
            "LABELLOOP_API_PROCESSES": "1",
            **(env or {}),
        }
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "labelloop", "serve", "--port", str(self.port), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def client(self) -> Client:
        return Client(self.url, timeout=30)

    def up(self) -> Client:
        """A client, once the server answers."""
        client = self.client()

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.output()}")
            client.health()
            return True

        wait_until(answers, 180, "the server to start", poll=0.2, ignore=(ClientError,))
        return client

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        """Its worker processes and multiprocessing's resource tracker."""
        return psutil.Process(self.proc.pid).children()

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM, then SIGKILL what is left of its session (its workers too)."""
        terminate(self.proc, grace_s)
