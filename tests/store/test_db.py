"""SQLite engines: writers take turns at a gate (in the order they came, across processes) that
every ending gives back."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from labelloop.store import db
from labelloop.store.db import READ_ONLY, WriteGate, make_engine, write_gate


def engine_with_table(path: Path) -> tuple[Engine, WriteGate]:
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    gate = write_gate(engine)
    assert gate is not None
    return engine, gate


def rows(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT x FROM t ORDER BY x")]


def test_a_writer_holds_the_gate_until_it_commits_or_rolls_back(tmp_path: Path) -> None:
    engine, gate = engine_with_table(tmp_path / "g.db")
    assert not gate.held
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert gate.held
    assert not gate.held
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        raise RuntimeError("the request fails")
    assert not gate.held
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
        conn.exec_driver_sql("SELECT x FROM t").all()
        assert not gate.held  # a reading transaction takes no turn
    assert rows(engine) == [1]  # the failed one committed nothing
    engine.dispose()


def test_a_waiting_writer_goes_on_when_the_one_before_ends(tmp_path: Path) -> None:
    engine, gate = engine_with_table(tmp_path / "g.db")
    started = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        started.set()
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        other = threading.Thread(target=second)
        other.start()
        assert started.wait(20)
    other.join(20)
    assert not other.is_alive() and not errors
    assert rows(engine) == [1, 2] and not gate.held
    engine.dispose()


def test_a_writer_that_cannot_begin_gives_the_gate_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds SQLite's write lock past the busy timeout: the request fails (503
    upstream), and the next writer of this process is not left waiting at the gate."""
    monkeypatch.setattr(db, "LOCK_WAIT_S", 0.2)
    path = tmp_path / "g.db"
    engine, gate = engine_with_table(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(OperationalError), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    assert not gate.held
    other.execute("COMMIT")
    other.close()
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
    assert rows(engine) == [2] and not gate.held
    engine.dispose()


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.001)


def test_writers_take_their_turns_in_the_order_they_came() -> None:
    turns = db._Turns()
    assert turns.acquire(timeout=1)
    order: list[int] = []

    def writer(k: int) -> None:
        assert turns.acquire(timeout=20)
        order.append(k)
        turns.release()

    threads = []
    for k in range(6):
        t = threading.Thread(target=writer, args=(k,))
        t.start()
        threads.append(t)
        wait_until(lambda k=k: len(turns._waiting) == k + 1)  # type: ignore[misc]
    turns.release()
    for t in threads:
        t.join(20)
    assert order == list(range(6)) and not turns.locked()


def test_a_turn_not_given_in_time_is_not_taken() -> None:
    turns = db._Turns()
    assert turns.acquire(timeout=1)
    assert not turns.acquire(timeout=0.05)  # gave up: not left in the queue
    assert not turns._waiting
    turns.release()
    assert not turns.locked() and turns.acquire(timeout=1)


def _hold_the_gate(lock_file: str, held: Any, done: Any) -> None:
    """Another process's writer: takes the gate and keeps it until told."""
    gate = WriteGate(Path(lock_file))
    info: dict[Any, Any] = {}
    gate.enter(info)
    held.set()
    done.wait(60)
    gate.leave(info)


def test_the_writers_of_two_processes_take_turns_at_the_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another process's writer holds the gate, this process's writer waits for it (and
    gives up after the lock wait, leaving its own gate free); once it ends, this one writes."""
    monkeypatch.setattr(db, "LOCK_WAIT_S", 0.2)
    path = tmp_path / "g.db"
    engine, gate = engine_with_table(path)
    ctx = multiprocessing.get_context("spawn")
    held, done = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_the_gate, args=(f"{path}.write-gate", held, done))
    other.start()
    try:
        assert held.wait(60)
        with pytest.raises(OperationalError), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert not gate.held
    finally:
        done.set()
        other.join(60)
    assert other.exitcode == 0
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
    assert rows(engine) == [2] and not gate.held
    engine.dispose()


def test_a_forked_child_leaves_its_parents_lock_file_taken(tmp_path: Path) -> None:
    lock_file = tmp_path / "g.db.write-gate"
    gate = WriteGate(lock_file)
    info: dict[Any, Any] = {}
    gate.enter(info)
    pid = os.fork()
    if pid == 0:  # the child: its copy of the open file is dropped (never unlocked) at fork
        os._exit(0 if not gate.held else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not db._FileTurn(lock_file).acquire(timeout=0.05)  # still the parent's
    gate.leave(info)
    other = db._FileTurn(lock_file)
    assert other.acquire(timeout=1)
    other.release()
