"""Helpers tests import (``conftest.py`` holds fixtures only and is never imported as a module).

:func:`wait_until` is the one way tests wait: poll a condition on state until it holds, with a
deadline. Tests never sleep a fixed time to let something happen; they wait for the state that
shows it happened (a job's row, a worker's answer, a file), so they are as fast as the machine
allows and still pass on a slow one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: The machine's PostgreSQL (trust authentication); tests create databases of their own on it.
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _pg_admin_connect() -> Any:
    import psycopg  # only tests that use PostgreSQL need the driver

    return psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
    )


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; yields its URL."""
    name = f"labelloop_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with _pg_admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
