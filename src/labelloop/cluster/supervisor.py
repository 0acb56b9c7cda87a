"""Processes the agent keeps running (Celery workers, the role service), restarted if they die.

A process is known by its name (a worker's Celery hostname); :meth:`Supervisor.ensure` with the same
name and command leaves a live process alone, so a second ``initial`` never starts duplicates. A
process that exits is restarted after an exponential back-off (1, 2, 4, … 30 s); the back-off
starts again from 1 s once a process has stayed up for a while. Each process runs in its own
session (process group), so stopping it also stops its children (a prefork pool, uvicorn workers).

Its status is the truth about each process, not only whether a PID exists: how long it has been
up, how often it exited in the last minutes and with which code, and its state (``running``,
``restarting`` while it waits for its next start, ``crash-looping`` once it exited
:data:`CRASH_LOOP_EXITS` times within :data:`RECENT_S` and has not stayed up since); a process
that is not running shows the last lines of its log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from labelloop.cluster.protocol import WorkerStatus

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 30.0
#: A process up this long is healthy again: its next failure is retried after 1 s.
STABLE_AFTER_S = 60.0
#: The window of "recent" exits in a status.
RECENT_S = 300.0
#: This many exits within :data:`RECENT_S`, and not up for :data:`STABLE_AFTER_S` since: the
#: process is crash-looping (``cluster init`` stops waiting for it and shows its log).
CRASH_LOOP_EXITS = 2
#: Lines of a process's log that a status shows when it is not running.
LOG_TAIL_LINES = 20
#: The line the supervisor writes into a process's log before each start.
START_MARK = "--- labelloop agent: start"


def backoff(failures: int, maximum: float = BACKOFF_MAX_S) -> float:
    """Seconds to wait before restart number ``failures`` (1-based): 1, 2, 4, … capped."""
    return float(min(maximum, 2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class ProcessSpec:
    """What to run: a command (argument list, no shell), its environment and its log file."""

    name: str
    role: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    log_file: Path

    @classmethod
    def make(
        cls, name: str, role: str, argv: Sequence[str], env: dict[str, str], log_file: Path
    ) -> ProcessSpec:
        return cls(name, role, tuple(argv), tuple(sorted(env.items())), log_file)


@dataclass
class _Entry:
    spec: ProcessSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0
    next_start: float = 0.0
    #: (monotonic time, exit code) of recent exits, newest last.
    exits: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=50))
    last_exit_code: int | None = None


class Supervisor:
    """Keeps named processes alive; one monitor thread polls them."""

    def __init__(
        self,
        poll_s: float = 0.5,
        max_backoff_s: float = BACKOFF_MAX_S,
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.scrub = scrub  # applied to log lines a status shows (no secret leaves by them)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public ------------------------------------------------------------------------------

    def ensure(self, spec: ProcessSpec) -> bool:
        """Run ``spec`` under its name; returns whether a process was (re)started.

        Same name and same spec: nothing happens (the monitor restarts it if it died). Same name,
        another spec (e.g. more service processes): the old process is stopped, the new one started.
        """
        with self._lock:
            entry = self._entries.get(spec.name)
            if entry is not None and entry.spec == spec:
                return False
            if entry is not None:
                self._terminate(entry)
            entry = _Entry(spec)
            self._entries[spec.name] = entry
            self._start(entry)
        self._ensure_thread()
        return True

    def status(self) -> list[WorkerStatus]:
        """Each process: state, uptime, restarts (all and recent), last exit code, log."""
        with self._lock:
            entries = list(self._entries.values())
        now = time.monotonic()
        return [self._status(e, now) for e in entries]

    def _status(self, e: _Entry, now: float) -> WorkerStatus:
        proc = e.proc
        running = proc is not None and proc.poll() is None
        recent = sum(1 for at, _ in e.exits if now - at <= RECENT_S)
        uptime = now - e.started_at if running else None
        looping = recent >= CRASH_LOOP_EXITS and (uptime is None or uptime < STABLE_AFTER_S)
        state = "crash-looping" if looping else "running" if running else "restarting"
        return WorkerStatus(
            name=e.spec.name,
            role=e.spec.role,
            pid=proc.pid if running and proc is not None else None,
            alive=state == "running",
            restarts=e.restarts,
            state=state,
            uptime_s=round(uptime, 1) if uptime is not None else None,
            recent_restarts=recent,
            last_exit_code=e.last_exit_code,
            log_file=str(e.spec.log_file),
            log_tail=[] if state == "running" else self.log_tail(e.spec.log_file),
        )

    def log_tail(self, path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last lines of the latest run in a process's log (scrubbed of secrets)."""
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
                text = fh.read().decode(errors="replace")
        except OSError:
            return []
        run = text.rsplit(START_MARK, 1)[-1].splitlines()[1:] if START_MARK in text else None
        tail = (run if run is not None else text.splitlines())[-lines:]
        return [self.scrub(line)[:400] for line in tail]

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def pid(self, name: str) -> int | None:
        with self._lock:
            entry = self._entries.get(name)
        return entry.proc.pid if entry is not None and entry.proc is not None else None

    def stop(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name, None)
        if entry is not None:
            self._terminate(entry)

    def stop_all(self) -> None:
        """Stop every process (SIGTERM to its group, SIGKILL after a grace period) and the monitor."""
        self._stop.set()
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            self._signal(entry, signal.SIGTERM)
        for entry in entries:
            self._reap(entry)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- internals ---------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._monitor, name="supervisor", daemon=True)
            self._thread.start()

    def _start(self, entry: _Entry) -> None:
        spec = entry.spec
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_file, "ab") as out:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            out.write(f"{START_MARK} {spec.name} at {stamp} ---\n".encode())
            out.flush()
            entry.proc = subprocess.Popen(
                list(spec.argv),
                env=dict(spec.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        entry.started_at = time.monotonic()
        log.info("started %s (pid %s)", spec.name, entry.proc.pid)

    def _monitor(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                entries = list(self._entries.values())
            now = time.monotonic()
            for entry in entries:
                with self._lock:
                    if self._entries.get(entry.spec.name) is not entry:
                        continue
                    proc = entry.proc
                    if proc is None:
                        if now >= entry.next_start:
                            entry.restarts += 1
                            self._start(entry)
                        continue
                    code = proc.poll()
                    if code is None:
                        continue
                    if now - entry.started_at >= STABLE_AFTER_S:
                        entry.failures = 0
                    entry.failures += 1
                    entry.exits.append((now, code))
                    entry.last_exit_code = code
                    delay = backoff(entry.failures, self.max_backoff_s)
                    log.warning(
                        "%s exited with %s; restarting in %.0f s", entry.spec.name, code, delay
                    )
                    entry.proc = None
                    entry.next_start = now + delay

    @staticmethod
    def _signal(entry: _Entry, sig: signal.Signals) -> None:
        proc = entry.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # its own session: the group is this process and its children

    def _reap(self, entry: _Entry, grace_s: float = 15.0) -> None:
        proc = entry.proc
        if proc is None:
            return
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal(entry, signal.SIGKILL)
            proc.wait(timeout=5)
        # children that outlived their parent (a pool process) go too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        entry.proc = None

    def _terminate(self, entry: _Entry) -> None:
        self._signal(entry, signal.SIGTERM)
        self._reap(entry)
