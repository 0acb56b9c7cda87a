"""Engines, sessions and migrations for SQLite (embedded default) and PostgreSQL (cluster)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections import deque
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
        gate._after_fork()


class _Turns:
    """A lock handed to its waiters in the order they came (``threading.Lock`` wakes any of them:
    under 30 annotators some writers waited many turns while others went through, seconds at
    the 99th percentile). ``release`` hands the lock straight to the oldest waiter."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiting: deque[threading.Lock] = deque()

    def locked(self) -> bool:
        return self._held

    def acquire(self, timeout: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            mine = threading.Lock()
            mine.acquire()
            self._waiting.append(mine)
        if mine.acquire(timeout=timeout):
            return True  # handed over by ``release``
        with self._mutex:
            if mine in self._waiting:
                self._waiting.remove(mine)
                return False
        return True  # handed over while the wait timed out: the turn is ours

    def release(self) -> None:
        with self._mutex:
            if self._waiting:
                self._waiting.popleft().release()  # still held: now by the oldest waiter
            else:
                self._held = False


#: How often a process's writer looks again for the other processes' lock file (seconds, the
#: first and the longest pause): SQLite's busy handler sleeps up to 100 ms.
_FILE_POLL_S = (0.0002, 0.002)


class _FileTurn:
    """The writers' lock across processes: an advisory lock (``flock``) on a file beside the
    database, taken by a process's one writer at a time (its :class:`_Turns` come first), tried
    every fraction of a millisecond, so a writer of one API process waits for the other's
    transaction to end, not for SQLite's busy handler to wake up (1, 2, 5 … 100 ms). The kernel
    drops the lock of a process that dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = os.getpid()

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    def acquire(self, timeout: float) -> bool:
        fd = self._file()
        deadline = time.monotonic() + timeout
        pause = _FILE_POLL_S[0]
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(2 * pause, _FILE_POLL_S[1])

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def after_fork(self) -> None:
        """A forked child shares the parent's open file (and a lock the parent holds on it):
        it drops its copy, never unlocking it, and opens its own when it first writes."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None


class WriteGate:
    """One writing transaction at a time, taken just before ``BEGIN IMMEDIATE`` and given back
    right after ``COMMIT``/``ROLLBACK``: first among the threads of this process, in the order
    they came, then (for a database file) among the processes that share it.

    SQLite has one write lock per file; a connection that finds it taken sleeps in SQLite's busy
    handler (1, 2, 5 … 100 ms between tries) however soon it is freed, so under 30 annotators the
    request threads spent most of their time asleep beside a free lock (docs/BENCHMARKS.md). A
    writer that waits here is woken as soon as the one before it ends. The gate is held no longer
    than SQLite's own lock (from ``BEGIN IMMEDIATE`` to the end of the transaction), so it adds
    no new wait to any; a process that writes without it still meets the busy handler.
    """

    def __init__(self, lock_file: Path | None = None) -> None:
        self._turns = _Turns()
        self._file = _FileTurn(lock_file) if lock_file is not None else None
        # A child forked while another thread wrote would inherit the gate taken, for ever.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset(ref))

    def _after_fork(self) -> None:
        self._turns = _Turns()
        if self._file is not None:
            self._file.after_fork()

    @property
    def held(self) -> bool:
        return self._turns.locked()

    def enter(self, info: dict[Any, Any]) -> None:
        started = time.monotonic()
        if not self._turns.acquire(timeout=LOCK_WAIT_S):
            raise _locked()
        if self._file is not None:
            left = LOCK_WAIT_S - (time.monotonic() - started)
            if not self._file.acquire(timeout=max(0.0, left)):
                self._turns.release()
                raise _locked()
        info[_GATED] = True

    def leave(self, info: dict[Any, Any]) -> None:
        if info.pop(_GATED, False):
            try:
                if self._file is not None:
                    self._file.release()
            finally:
                self._turns.release()

    def after(self, end: Callable[[Any], None]) -> Callable[[Any], None]:
        """``end`` (the dialect's commit or rollback of a pooled connection), then the gate."""

        def wrapped(dbapi_conn: Any) -> None:
            try:
                end(dbapi_conn)
            finally:
                self.leave(_info(dbapi_conn))

        return wrapped


def _locked() -> OperationalError:
    """What a writer that waited :data:`LOCK_WAIT_S` in vain raises: SQLite's own error, which
    the API answers with 503."""
    return OperationalError("BEGIN IMMEDIATE", None, Exception("database is locked"))


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
        lock_file: Path | None = None
        if path and path != ":memory:" and "///" in url:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            pool = {"pool_size": SQLITE_POOL, "max_overflow": SQLITE_OVERFLOW}  # a file's pool
            lock_file = Path(f"{path}.write-gate")
        engine = create_engine(
            url, connect_args={"timeout": LOCK_WAIT_S, "check_same_thread": False}, **pool
        )
        gate = _GATES[engine] = WriteGate(lock_file)
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
