"""What every entry point shares: settings, the store, the datastore, the job backend, the model cache.

The API, the CLI, the local worker processes and the Celery workers each build one
:class:`Runtime` and pass it to the functions in :mod:`labelloop.service` and :mod:`labelloop.loop`.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from labelloop.config import Settings
from labelloop.datastore import TaskFolder
from labelloop.learners import backbones, sentence
from labelloop.loop.cache import ModelCache
from labelloop.store.db import (
    READ_ONLY,
    make_engine,
    make_sessionmaker,
    migrate,
    translate_db_errors,
)

if TYPE_CHECKING:
    # Only a type: the backends import the runtime.
    from labelloop.jobs.base import JobBackend


_depth = threading.local()


#: Set by a Celery worker to its node name, so a job records which worker ran it.
WORKER_NAME_ENV = "LABELLOOP_WORKER_NAME"


def worker_identity() -> str:
    """Who runs this job: the Celery node name when set, else ``<host>:<pid>``."""
    return os.environ.get(WORKER_NAME_ENV) or f"{socket.gethostname()}:{os.getpid()}"


#: glibc's ``mallopt`` options.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Arrays at least this big are mapped on their own and go back to the system when freed.
MMAP_THRESHOLD_BYTES = 1 << 20
ARENAS = 2


def keep_memory_flat() -> None:
    """Keep a busy process's resident memory close to what it uses (glibc; elsewhere a no-op).

    By default glibc gives each thread that allocates its own arena (up to eight per core) and
    keeps what is freed there for reuse, and it raises its mmap threshold whenever a big block is
    freed, so later big arrays (features, scores, kernel caches) come from those arenas and
    fragment them. Under 30 annotators a server grew by hundreds of MB while the Python heap
    stayed flat (docs/RELIABILITY.md). Two arenas and a fixed 1 MiB mmap threshold keep it flat.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(M_ARENA_MAX, ARENAS)
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


class Runtime:
    def __init__(self, settings: Settings, *, migrate_schema: bool = False) -> None:
        keep_memory_flat()  # every process builds a runtime before it starts working
        self.settings = settings
        backbones.configure(settings)  # which image backbone this process's tasks use
        self.data_dir = settings.resolved_data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        sentence.configure(settings.encoder_dir or self.data_dir / "encoders")  # its ONNX graphs
        if migrate_schema:
            migrate(settings.resolved_database_url)
        self.engine = make_engine(settings.resolved_database_url)
        self.sessions = make_sessionmaker(self.engine)
        self._jobs: JobBackend | None = None
        self._models: ModelCache | None = None
        self._lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises.

        Transactions never nest: with SQLite a nested one would wait for its own parent's lock.
        """
        if getattr(_depth, "n", 0):
            raise RuntimeError("nested store transaction: pass the open session down instead")
        _depth.n = 1
        try:
            with translate_db_errors(), self.sessions() as session, session.begin():
                yield session
        finally:
            _depth.n = 0

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A transaction that only reads: on SQLite it reads a snapshot beside a writer instead of
        queueing for the write lock (``/next`` and ``/predictions`` while a promotion writes a
        pool's pre-labels). Writing in it is a bug."""
        if getattr(_depth, "n", 0):
            raise RuntimeError("nested store transaction: pass the open session down instead")
        _depth.n = 1
        try:
            with translate_db_errors(), self.sessions() as session, session.begin():
                session.connection(execution_options={READ_ONLY: True})  # before its BEGIN
                yield session
        finally:
            _depth.n = 0

    def folder(self, task_id: int) -> TaskFolder:
        return TaskFolder(self.data_dir, task_id)

    @property
    def jobs(self) -> JobBackend:
        if self._jobs is None:
            raise RuntimeError("this runtime has no job backend")
        return self._jobs

    def attach_jobs(self, backend: JobBackend) -> None:
        self._jobs = backend

    @property
    def has_jobs(self) -> bool:
        return self._jobs is not None

    @property
    def models(self) -> ModelCache:
        with self._lock:
            if self._models is None:
                self._models = ModelCache(self.settings.model_cache_bytes)
            return self._models

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.stop()
        self.engine.dispose()
