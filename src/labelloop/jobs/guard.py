"""One server per data folder, and no worker process outliving its server.

- A worker process asks the kernel to kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``),
  and a watchdog thread checks its parent too (other systems, or a parent that died before the
  request took effect). A ``kill -9`` of ``labelloop serve`` thus takes its workers with it, and
  multiprocessing's resource tracker (which lives while any of them holds its pipe) ends too.
- The server holds an exclusive lock on ``<data>/run/server.lock`` while it runs: a second server on
  the same folder is refused with a clear message. Each worker holds a lock on its own
  ``<data>/run/worker-<pid>.lock``: a starting server kills workers whose lock is still held (they
  outlived a server that could not take them along) and removes the files of dead ones. Locks are
  released by the kernel when their process dies, so a held lock always means a live process with
  that pid (never a recycled one).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO

from labelloop.errors import Conflict

log = logging.getLogger(__name__)

RUN_DIR = "run"
SERVER_LOCK = "server.lock"
WORKER_PREFIX = "worker-"
#: Linux prctl option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: How often a worker's watchdog looks at its parent.
WATCH_INTERVAL_S = 0.5


def run_dir(data_dir: Path) -> Path:
    path = data_dir / RUN_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


class ServerLock:
    """The data folder's server lock, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.dir = run_dir(data_dir)
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock (or refuse), then stop workers a dead server left behind."""
        path = self.dir / SERVER_LOCK
        handle = open(path, "a+")  # noqa: SIM115 - held for the server's life
        if not _try_lock(handle):
            handle.close()
            other = _read_pid(path)
            raise Conflict(
                f"another labelloop server{f' (pid {other})' if other else ''} is running on the "
                f"data folder {self.data_dir}; stop it first, or give this one its own "
                "--data-dir"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        stopped = stop_stale_workers(self.dir)
        if stopped:
            log.warning(
                "stopped %d worker process(es) %s left running by a server of %s that died",
                len(stopped),
                stopped,
                self.data_dir,
            )

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                (self.dir / SERVER_LOCK).unlink()
            self._handle.close()
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None


def stop_stale_workers(directory: Path, timeout: float = 10.0) -> list[int]:
    """Kill the live workers registered in ``directory`` and remove every worker lock file;
    returns the pids that were killed."""
    killed: list[int] = []
    for path in sorted(directory.glob(f"{WORKER_PREFIX}*.lock")):
        with open(path, "a+") as handle:
            if not _try_lock(handle):
                pid = _read_pid(path)
                if pid is None or pid == os.getpid():
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                deadline = time.monotonic() + timeout
                while not _try_lock(handle):  # released by the kernel once the process is gone
                    if time.monotonic() > deadline:
                        raise Conflict(f"worker process {pid} of {directory.parent} does not end")
                    time.sleep(0.05)
            with contextlib.suppress(OSError):
                path.unlink()
    return killed


_WORKER_LOCK: IO[str] | None = None


def register_worker(directory: Path) -> None:
    """Hold this worker process's lock file for the rest of its life."""
    global _WORKER_LOCK
    path = directory / f"{WORKER_PREFIX}{os.getpid()}.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held for the process's life
    _try_lock(handle)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _WORKER_LOCK = handle


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (its parent) dies.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that started the process ends, so the local
    backend starts every worker from its dispatcher thread, which lives as long as the pool.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCH_INTERVAL_S)
        os._exit(1)

    threading.Thread(target=watch, name="labelloop-parent-watch", daemon=True).start()
