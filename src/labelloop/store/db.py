"""Engines, sessions and migrations for SQLite (embedded default) and PostgreSQL (cluster)."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labelloop.errors import Unavailable

MIGRATIONS = Path(__file__).parent / "migrations"
#: Execution option of a transaction that only reads (see :meth:`labelloop.runtime.Runtime.reading`).
READ_ONLY = "labelloop_read_only"
#: How long a writer waits for SQLite's write lock (the busy timeout) and for its turn in its
#: process (:class:`WriteGate`) before the request answers 503.
LOCK_WAIT_S = 60
#: SQLite connections per engine kept open, and the most open at once: a sync route runs in one
#: of anyio's 40 threads, and a thread waiting for its turn to write holds its connection, so the
#: pool is big enough that readers never queue behind the writers for a connection.
SQLITE_POOL = 20
SQLITE_OVERFLOW = 40
#: Key in a connection's ``info`` while it holds its process's :class:`WriteGate`.
_GATED = "labelloop_write_gate"


def _info(dbapi_conn: Any) -> dict[Any, Any]:
    """A pooled connection's ``info`` (empty for a bare or first-connect one: it took no gate)."""
    try:
        info: dict[Any, Any] = dbapi_conn.info
    except (AttributeError, NotImplementedError):
        return {}
    return info


def _reset(ref: weakref.ReferenceType[WriteGate]) -> None:
    gate = ref()
    if gate is not None:
        gate._lock = threading.Lock()


class WriteGate:
    """One writing transaction at a time in this process, taken just before ``BEGIN IMMEDIATE``
    and given back right after ``COMMIT``/``ROLLBACK``.

    SQLite has one write lock per file; a connection that finds it taken sleeps in SQLite's busy
    handler (1, 2, 5 … 100 ms between tries) however soon it is freed, so under 30 annotators the
    request threads spent most of their time asleep beside a free lock (docs/BENCHMARKS.md). A
    writer that waits here is woken as soon as the one before it ends; only the writers of other
    processes (the workers) still meet the busy handler. It holds no longer than SQLite's own lock
    (from ``BEGIN IMMEDIATE`` to the end of the transaction), so it adds no new wait to any.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # A child forked while another thread wrote would inherit the gate taken, for ever.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset(ref))

    @property
    def held(self) -> bool:
        return self._lock.locked()

    def enter(self, info: dict[Any, Any]) -> None:
        if not self._lock.acquire(timeout=LOCK_WAIT_S):
            raise OperationalError("BEGIN IMMEDIATE", None, Exception("database is locked"))
        info[_GATED] = True

    def leave(self, info: dict[Any, Any]) -> None:
        if info.pop(_GATED, False):
            self._lock.release()

    def after(self, end: Callable[[Any], None]) -> Callable[[Any], None]:
        """``end`` (the dialect's commit or rollback of a pooled connection), then the gate."""

        def wrapped(dbapi_conn: Any) -> None:
            try:
                end(dbapi_conn)
            finally:
                self.leave(_info(dbapi_conn))

        return wrapped


_GATES: weakref.WeakKeyDictionary[Engine, WriteGate] = weakref.WeakKeyDictionary()


def write_gate(engine: Engine) -> WriteGate | None:
    """The gate of an engine's writers (SQLite engines only)."""
    return _GATES.get(engine)


def make_engine(url: str) -> Engine:
    """An engine tuned for its backend.

    SQLite is shared by the API process and the worker processes, so it runs in WAL mode with a
    busy timeout, and every transaction starts with ``BEGIN IMMEDIATE``: a transaction that reads
    and then writes never fails half-way because another process wrote in between. The writers of
    one process take turns at a :class:`WriteGate` first. One that only reads (marked
    :data:`READ_ONLY`) starts with a plain ``BEGIN`` and does not wait for writers.
    PostgreSQL gets a connection pool that checks connections before use.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        pool: dict[str, int] = {}
        if path and path != ":memory:" and "///" in url:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            pool = {"pool_size": SQLITE_POOL, "max_overflow": SQLITE_OVERFLOW}  # a file's pool
        engine = create_engine(
            url, connect_args={"timeout": LOCK_WAIT_S, "check_same_thread": False}, **pool
        )
        gate = _GATES[engine] = WriteGate()
        # The gate is given back once the transaction has ended in SQLite (after COMMIT, not
        # before: the next writer would find the lock still held and sleep in the busy handler).
        # The engine's own dialect object: only this engine's connections pass through it.
        engine.dialect.do_commit = gate.after(engine.dialect.do_commit)  # type: ignore[method-assign,assignment]
        engine.dialect.do_rollback = gate.after(engine.dialect.do_rollback)  # type: ignore[method-assign,assignment]

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy, not pysqlite, issue BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={LOCK_WAIT_S * 1000}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # A transaction that only reads (Runtime.reading) reads a snapshot and never waits
            # for a writer: WAL lets it run beside one.
            if conn.get_execution_options().get(READ_ONLY, False):
                conn.exec_driver_sql("BEGIN")
                return
            gate.enter(conn.info)
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                gate.leave(conn.info)
                raise

        @event.listens_for(engine, "close")
        def _on_close(dbapi_conn: Any, record: Any) -> None:
            gate.leave(record.info)  # a connection closed mid-transaction (invalidated)

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def dispose_after_fork(engine: Engine) -> None:
    """A forked worker must not reuse its parent's connections (they share sockets)."""
    engine.dispose(close=False)


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn a database that does not answer into :class:`Unavailable` (HTTP 503), not a crash."""
    try:
        yield
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig else "database error"
        raise Unavailable(f"the database is not available: {reason}") from None


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    # Alembic only where a process migrates (serve, workers, `db upgrade`), not in every import.
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    engine = make_engine(url)
    try:
        # Most starts find the schema current: say so without queueing for the lock behind
        # every other process that starts at the same time (a cluster starts dozens at once).
        head = ScriptDirectory.from_config(cfg).get_current_head()
        with translate_db_errors(), engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision() == head
        if not current:
            with translate_db_errors(), engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # Several processes may start at once: serialise their migrations.
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7243001)")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    finally:
        engine.dispose()
    os.environ.setdefault("LABELLOOP_MIGRATED", "1")
