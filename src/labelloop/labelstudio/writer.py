"""Label Studio's new tasks and their pre-labels, stored after ``/predict`` has answered.

A ``/predict`` of a text project computes its answers from the texts the request carries and
hands what it learnt (the tasks, as items, and the pre-labels) to this process's
:class:`WriteBehind`: one thread that stores everything queued since its last write in one
transaction, so that many requests cost one write lock instead of two each. Nothing is lost that
matters: a task Label Studio later annotates comes with its data in the webhook, which stores it
itself if the writer has not (and :func:`flush` is waited for first, so the common case finds the
item the writer stored); the same task sent twice is one item (``external_id`` is unique per task:
the lookup finds it, and a concurrent insert of the same id fails on the key and is retried). A
pre-label is stored only while the version that made it still serves. A request that fails queues
nothing.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError

from labelloop.errors import LabelloopError, Unavailable
from labelloop.jobs.base import DataPrediction
from labelloop.runtime import Runtime
from labelloop.service.common import enqueue
from labelloop.service.items import ItemIn, store_in
from labelloop.store.models import Job, Task, utcnow
from labelloop.store.upsert import upsert_predictions

log = logging.getLogger(__name__)

#: Items written per transaction at most (a burst of requests is written in several).
MAX_BATCH = 2000
#: A write the database refused as unavailable is tried this many times, waiting longer each time.
ATTEMPTS = 3
RETRY_AFTER_S = 1.0


@dataclass
class Pending:
    """What one ``/predict`` learnt: its tasks as items and, aligned, its answers (``None``
    before a model, or for a text that could not be scored) from ``version``."""

    task_id: int
    version: int | None
    items: Sequence[ItemIn]
    answers: Sequence[DataPrediction | None]
    attempts: int = field(default=0)
    seq: int = field(default=0)


class WriteBehind:
    """One thread per process that writes what ``/predict`` calls queued, in batches."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._cond = threading.Condition()
        self._queue: list[Pending] = []
        self._submitted = 0
        self._inflight: list[Pending] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, entry: Pending) -> None:
        with self._cond:
            self._submitted += 1
            entry.seq = self._submitted
            self._queue.append(entry)
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="labelstudio-writer", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is written (or given up on);
        ``False`` if ``timeout`` passed first."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(
                lambda: all(e.seq > target for e in (*self._queue, *self._inflight)), timeout
            )

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
                self._inflight = batch
            retry: list[Pending] = []
            try:
                retry = self._write_all(batch)
            except Exception:  # never let the thread die: what failed is logged below
                log.exception("Label Studio write-behind failed")
            with self._cond:
                self._inflight = retry
                self._cond.notify_all()
                if retry:
                    # Wait before trying again (a database that restarts); a close does not wait.
                    self._cond.wait_for(lambda: self._stopping, RETRY_AFTER_S)
                    self._queue[:0] = retry
                    self._inflight = []

    def _write_all(self, batch: list[Pending]) -> list[Pending]:
        """Write a batch in one transaction per task; entries of a transaction that fails are
        written one by one, so that one bad entry fails alone. Returns the entries to retry."""
        retry: list[Pending] = []
        by_task: dict[int, list[Pending]] = {}
        for entry in batch:
            by_task.setdefault(entry.task_id, []).append(entry)
        for group in by_task.values():
            chunks: list[list[Pending]] = [[]]
            size = 0
            for entry in group:
                if size and size + len(entry.items) > MAX_BATCH:
                    chunks.append([])
                    size = 0
                chunks[-1].append(entry)
                size += len(entry.items)
            for chunk in chunks:
                try:
                    self._write(chunk)
                    continue
                except Exception as exc:
                    if len(chunk) == 1:
                        retry += self._failed(chunk[0], exc)
                        continue
                for entry in chunk:
                    try:
                        self._write([entry])
                    except Exception as exc:
                        retry += self._failed(entry, exc)
        return retry

    def _failed(self, entry: Pending, exc: Exception) -> list[Pending]:
        """Log a write that failed; one the database refused as unavailable is tried again."""
        entry.attempts += 1
        if isinstance(exc, Unavailable) and entry.attempts < ATTEMPTS:
            log.warning("Label Studio write-behind: %s; trying again", exc.message)
            return [entry]
        if isinstance(exc, LabelloopError):
            why = exc.message
        else:  # a bug: the traceback is logged
            log.error("Label Studio write-behind of task %s failed", entry.task_id, exc_info=exc)
            why = type(exc).__name__
        # The tasks come again: with the next /predict that carries them, or with their
        # annotation's webhook, which stores its task itself.
        log.warning(
            "Label Studio write-behind gave up on %d tasks of task %s: %s",
            len(entry.items),
            entry.task_id,
            why,
        )
        return []

    def _write(self, entries: list[Pending]) -> None:
        """The entries' items (the newest of each ``external_id``) and their pre-labels, in one
        transaction; a concurrent writer of the same new item makes it run again, finding it."""
        latest: dict[str | None, tuple[ItemIn, DataPrediction | None, int | None]] = {}
        for entry in entries:
            for item, answer in zip(entry.items, entry.answers, strict=True):
                latest.pop(item.external_id, None)  # the newest last, in queue order
                latest[item.external_id] = (item, answer, entry.version)
        items = [item for item, _, _ in latest.values()]
        task_id = entries[0].task_id
        jobs: list[Job] = []
        for attempt in (1, 2):
            try:
                with self.rt.session() as s:
                    task = s.get(Task, task_id)
                    if task is None:
                        return  # deleted since: nothing to keep
                    added, jobs = store_in(s, task, items)
                    ids = {row["external_id"]: int(row["id"]) for row in added["items"]}
                    now = utcnow()
                    rows = [
                        {
                            "item_id": ids[ext],
                            "task_id": task_id,
                            "version": version,
                            "labels": answer.labels,
                            "scores": answer.scores,
                            "score": answer.score,
                            "uncertainty": answer.uncertainty,
                            "created_at": now,
                        }
                        for ext, (_, answer, version) in latest.items()
                        if answer is not None
                        and answer.error is None
                        and answer.uncertainty is not None
                        and version is not None
                        and version == task.served_version
                    ]
                    upsert_predictions(s, rows)
                break
            except IntegrityError:
                if attempt == 2:
                    raise
        enqueue(self.rt, jobs)


_writers: weakref.WeakKeyDictionary[Runtime, WriteBehind] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def writer(rt: Runtime) -> WriteBehind:
    """This process's writer for ``rt``."""
    with _lock:
        got = _writers.get(rt)
        if got is None:
            got = _writers[rt] = WriteBehind(rt)
        return got


def flush(rt: Runtime, timeout: float | None = None) -> bool:
    """Wait for what ``/predict`` calls of this process queued (nothing when none did)."""
    with _lock:
        got = _writers.get(rt)
    return True if got is None else got.flush(timeout)


def close(rt: Runtime) -> None:
    """Write what is queued and stop the writer (the server stops)."""
    with _lock:
        got = _writers.pop(rt, None)
    if got is not None:
        got.close()
