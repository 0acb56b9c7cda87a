"""SQLite engines: the writers of one process take turns at a gate that every ending gives back."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

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
