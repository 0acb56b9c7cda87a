"""Engines, sessions and migrations for SQLite (embedded default) and PostgreSQL (cluster)."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


def make_engine(url: str) -> Engine:
    """An engine tuned for its backend.

    SQLite is shared by the API process and the worker processes, so it runs in WAL mode with a
    busy timeout, and every transaction starts with ``BEGIN IMMEDIATE``: a transaction that reads
    and then writes never fails half-way because another process wrote in between. One that only
    reads (marked :data:`READ_ONLY`) starts with a plain ``BEGIN`` and does not wait for writers.
    PostgreSQL gets a connection pool that checks connections before use.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy, not pysqlite, issue BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # A transaction that only reads (Runtime.reading) reads a snapshot and never waits
            # for a writer: WAL lets it run beside one.
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

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
