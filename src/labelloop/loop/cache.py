"""Process-level caches: loaded models (bounded by memory) and open feature files.

Both are keyed by task first, so one task's entries can never answer for another's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labelloop.datastore import FeatureRows

    # Only a type here: the runtime (and every light process with it) imports this module, and
    # the learners package imports scikit-learn.
    from labelloop.learners.base import Learner


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


#: Loaded versions kept per task: the served one and the one before it (requests sent just
#: before a promotion still ask for it). Older ones only cost memory: every promotion would
#: otherwise leave a model behind until the byte bound is reached.
VERSIONS_PER_TASK = 2


class ModelCache:
    """Least-recently-used loaded models, bounded by an estimate of their size in memory and by
    :data:`VERSIONS_PER_TASK` versions per task.

    A request takes a reference to the model it starts with and keeps it to the end, so a
    promotion (a new key) never changes the model under a request already in flight.
    """

    def __init__(self, max_bytes: int, versions_per_task: int = VERSIONS_PER_TASK) -> None:
        self.max_bytes = max_bytes
        self.versions_per_task = versions_per_task
        self._entries: OrderedDict[tuple[int, int], tuple[Learner, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[int, int], threading.Lock] = {}

    def get(self, task_id: int, version: int, load: Callable[[], tuple[Learner, int]]) -> Learner:
        key = (task_id, version)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per key, even under concurrent first requests
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None:
                    return hit[0]
            learner, size = load()
            with self._lock:
                self._entries[key] = (learner, size)
                self._loading.pop(key, None)
                self._evict()
            return learner

    def _evict(self) -> None:
        per_task: dict[int, int] = {}
        for key in list(reversed(self._entries)):  # most recently used first
            per_task[key[0]] = per_task.get(key[0], 0) + 1
            if per_task[key[0]] > self.versions_per_task:
                del self._entries[key]
        total = sum(size for _, size in self._entries.values())
        while total > self.max_bytes and len(self._entries) > 1:
            _, (_, size) = self._entries.popitem(last=False)
            total -= size

    def drop_task(self, task_id: int) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == task_id]:
                del self._entries[key]

    def keys(self) -> list[tuple[int, int]]:
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._entries.values())


class FeatureCache:
    """The feature files this process reads (:class:`~labelloop.datastore.FeatureRows`, which
    know their rows' layout), by (task, featurizer version). No feature is kept here: rows are
    read from the file when asked for (the kernel's page cache keeps the hot ones)."""

    def __init__(self, max_tasks: int = 64) -> None:
        self.max_tasks = max_tasks
        self._tasks: OrderedDict[tuple[int, str], FeatureRows] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, task_id: int, version: str, open_rows: Callable[[], FeatureRows]) -> FeatureRows:
        key = (task_id, version)
        with self._lock:
            rows = self._tasks.get(key)
            if rows is None:
                rows = self._tasks[key] = open_rows()
                while len(self._tasks) > self.max_tasks:
                    self._tasks.popitem(last=False)
            else:
                self._tasks.move_to_end(key)
            return rows

    def drop_task(self, task_id: int) -> None:
        with self._lock:
            for key in [k for k in self._tasks if k[0] == task_id]:
                del self._tasks[key]

    def clear(self) -> None:
        """Forget every open file (a process that opens another data folder: tests, mostly)."""
        with self._lock:
            self._tasks.clear()


FEATURES = FeatureCache()
