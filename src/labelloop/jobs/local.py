"""The embedded default: jobs run in a pool of local worker processes, predictions in-process.

Training is CPU-bound, so it runs in separate processes and the API keeps answering while a model
trains. Job state lives in the store: jobs left queued or running by a stopped server are picked up
again at the next start, and a worker process that dies has its job run again.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import queue
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from sqlalchemy import select

from labelloop.config import Settings
from labelloop.jobs.base import JobBackend
from labelloop.learners import backbones
from labelloop.loop import prediction
from labelloop.loop.prediction import DataPrediction, ItemPredictions
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import ACTIVE_JOB_STATES, Job

log = logging.getLogger(__name__)

#: Lower runs first: a model update should not wait behind a backlog of featurization.
PRIORITY = {"train": 0, "predict": 1, "autolabel": 1, "featurize": 2}

_WORKER_RT: Runtime | None = None


def _init_worker(settings: Settings) -> None:
    """Runs once in each worker process: its own runtime, warm imports, no Ctrl-C tracebacks."""
    global _WORKER_RT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s",
    )
    _WORKER_RT = Runtime(settings)
    backbones.preload()  # the image backbone, once per process, before any job's clock starts
    import sklearn.neighbors
    import sklearn.svm  # noqa: F401

    import labelloop.loop.executor  # noqa: F401


_THREAD_RT = threading.local()


def _init_thread_worker(rt: Runtime) -> None:
    _THREAD_RT.rt = rt


def _run(job_id: int) -> list[int]:
    from labelloop.loop.executor import execute

    rt = getattr(_THREAD_RT, "rt", None) or _WORKER_RT
    assert rt is not None
    return execute(rt, job_id)


def _noop() -> int:
    return 0


class LocalJobs(JobBackend):
    name = "local"

    def __init__(self, rt: Runtime, workers: int | None = None, *, threads: bool = False) -> None:
        self.rt = rt
        self.workers = workers or rt.settings.local_workers
        # Threads instead of processes: for tests and tiny deployments (training then shares the GIL).
        self.threads = threads
        self._queue: queue.PriorityQueue[tuple[int, int, int]] = queue.PriorityQueue()
        self._slots = threading.Semaphore(self.workers)
        self._seq = itertools.count()
        self._pool: Executor | None = None
        self._thread: threading.Thread | None = None
        self._inflight: dict[int, Future[list[int]]] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def _new_pool(self) -> Executor:
        if self.threads:
            return ThreadPoolExecutor(
                max_workers=self.workers,
                thread_name_prefix="labelloop-worker",
                initializer=_init_thread_worker,
                initargs=(self.rt,),
            )
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.rt.settings,),
        )

    def start(self) -> None:
        backbones.preload()  # predictions run in this (the API) process
        self._pool = self._new_pool()
        # Start and warm every worker now, not on the first label: the first model would wait.
        warm = [self._pool.submit(_noop) for _ in range(self.workers)]
        for fut in warm:
            fut.result(timeout=120)
        self._thread = threading.Thread(target=self._dispatch, name="labelloop-jobs", daemon=True)
        self._thread.start()
        with self.rt.session() as s:
            leftover = s.scalars(
                select(Job.id).where(Job.state.in_(ACTIVE_JOB_STATES)).order_by(Job.id)
            ).all()
        self.enqueue(list(leftover))

    def stop(self) -> None:
        self._stopping = True
        self._queue.put((-1, -1, -1))
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def enqueue(self, job_ids: Sequence[int]) -> None:
        ids = [int(j) for j in job_ids]
        if not ids:
            return
        with self.rt.session() as s:
            kinds = dict(s.execute(select(Job.id, Job.kind).where(Job.id.in_(ids))).all())
        for job_id in ids:
            if job_id in kinds:
                self._queue.put((PRIORITY.get(kinds[job_id], 9), next(self._seq), job_id))

    def _dispatch(self) -> None:
        """Hand jobs to the pool by priority, never more than there are workers.

        The pool's own queue is first-come-first-served; keeping jobs here until a worker is
        free lets a training job overtake a backlog of featurization.
        """
        while True:
            self._slots.acquire()
            _, _, job_id = self._queue.get()
            if job_id < 0 or self._stopping:
                self._slots.release()
                return
            with self._lock:
                if job_id in self._inflight:
                    self._slots.release()
                    continue
                assert self._pool is not None
                try:
                    fut = self._pool.submit(_run, job_id)
                except (BrokenProcessPool, RuntimeError):
                    self._pool = self._new_pool()
                    fut = self._pool.submit(_run, job_id)
                self._inflight[job_id] = fut
            fut.add_done_callback(functools.partial(self._done, job_id))

    def _done(self, job_id: int, fut: Future[list[int]]) -> None:
        with self._lock:
            self._inflight.pop(job_id, None)
        self._slots.release()
        if self._stopping:
            return
        try:
            self.enqueue(fut.result())
        except BrokenProcessPool:
            log.warning("a worker process died while running job %s; running it again", job_id)
            with self._lock:
                if self._pool is not None and not self._stopping:
                    self._pool = self._new_pool()
            self.enqueue([job_id])
        except Exception:
            log.exception("job %s failed", job_id)

    def predict_data(
        self, spec: TaskSpec, version: int, data: Sequence[str]
    ) -> list[DataPrediction]:
        return prediction.predict_data(self.rt, spec, version, data)

    def predict_items(
        self, spec: TaskSpec, version: int, item_ids: Sequence[int]
    ) -> ItemPredictions:
        return prediction.predict_stored(self.rt, spec, version, item_ids)

    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (empty for threads)."""
        pool = self._pool
        if not isinstance(pool, ProcessPoolExecutor):
            return []
        return [p.pid for p in getattr(pool, "_processes", {}).values() if p.pid is not None]

    def status(self) -> dict[str, Any]:
        with self._lock:
            inflight = sorted(self._inflight)
        return {
            "backend": self.name,
            "workers": self.workers,
            "queued": self._queue.qsize(),
            "running": inflight,
        }
