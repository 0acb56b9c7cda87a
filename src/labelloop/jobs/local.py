"""The embedded default: jobs run in a pool of local worker processes, predictions in-process.

Training is CPU-bound, so it runs in separate processes and the API keeps answering while a model
trains. Job state lives in the store: jobs left queued or running by a stopped server are picked up
again at the next start, and a worker process that dies has its job run again.

A stop is prompt: running jobs are abandoned (their workers terminated) and run again at the next
start, without counting as an attempt. Workers never outlive the server, and one server at a time
uses a data folder (:mod:`labelloop.jobs.guard`).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import importlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labelloop.config import Settings
from labelloop.errors import Unavailable
from labelloop.jobs.base import DataPrediction, ItemPredictions, JobBackend
from labelloop.jobs.guard import ServerLock, die_with_parent, register_worker, stop_stale_workers
from labelloop.jobs.state import ACTIVE_JOB_STATES, release
from labelloop.learners import backbones
from labelloop.loop import prediction
from labelloop.loop.executor import HEAVY_RUNNERS, KINDS, execute
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Job, utcnow

log = logging.getLogger(__name__)

#: How long a job waits to run again when the store did not answer.
RETRY_AFTER_S = 2.0
#: How long a terminated worker has to end before it is killed.
STOP_GRACE_S = 5.0

#: How much lower the CPU priority (``nice``) of the bulk workers is than the API's and the
#: training worker's: a training or an answer to a person shares the cores with bulk work but
#: gets most of them.
BULK_NICE = 10
#: Priority of the jobs the training lane is kept free for (see :data:`KINDS`).
TRAIN_PRIORITY = 0

_WORKER_RT: Runtime | None = None


def _init_worker(settings: Settings, parent_pid: int, run_dir: Path, nice: int = 0) -> None:
    """Runs once in each worker process: tied to its server's life, its own runtime, no Ctrl-C
    tracebacks (the server stops its workers itself), and its lane's CPU priority."""
    global _WORKER_RT
    die_with_parent(parent_pid)
    register_worker(run_dir)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s",
    )
    _WORKER_RT = Runtime(settings)
    for module in HEAVY_RUNNERS:  # scikit-learn and the learners, before any job's clock starts
        importlib.import_module(module)
    backbones.preload()  # the image backbone, once per process, before any job's clock starts


_THREAD_RT = threading.local()


def _init_thread_worker(rt: Runtime) -> None:
    _THREAD_RT.rt = rt


def _run(job_id: int) -> list[int]:
    rt = getattr(_THREAD_RT, "rt", None) or _WORKER_RT
    assert rt is not None
    return execute(rt, job_id)


def _noop() -> int:
    return 0


@dataclass
class _Lane:
    """A pool of workers and the jobs it may take.

    ``train`` has one worker that runs training jobs only, so a triggered training starts at once
    even while every bulk worker is in the middle of a long featurize or pool-prediction job;
    ``bulk`` runs every kind (trainings too, when the training worker is busy) at a lower CPU
    priority."""

    name: str
    size: int
    nice: int
    only_priority: int | None
    pool: Executor | None = None
    busy: int = 0

    def admits(self, priority: int) -> bool:
        return self.busy < self.size and (
            self.only_priority is None or priority == self.only_priority
        )


class LocalJobs(JobBackend):
    name = "local"

    def __init__(self, rt: Runtime, workers: int | None = None, *, threads: bool = False) -> None:
        self.rt = rt
        #: Bulk workers; one more process, the training lane, is kept for training jobs.
        self.workers = workers or rt.settings.local_workers
        # Threads instead of processes: for tests and tiny deployments (training then shares the GIL).
        self.threads = threads
        #: Waiting jobs as a heap of (priority, arrival, job id), guarded by ``_cond``.
        self._heap: list[tuple[int, int, int]] = []
        self._seq = itertools.count()
        self._lanes = self._make_lanes()
        self._thread: threading.Thread | None = None
        #: Job id -> (its future, when it was handed to a worker, its lane).
        self._inflight: dict[int, tuple[Future[list[int]], datetime, _Lane]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        # The data folder is this server's from now on (refused if another server runs on it);
        # workers a killed server left behind are stopped here.
        self._folder = ServerLock(rt.data_dir)
        if not threads:
            self._folder.acquire()

    def _make_lanes(self) -> list[_Lane]:
        return [
            _Lane("train", 1, 0, TRAIN_PRIORITY),
            _Lane("bulk", self.workers, 0 if self.threads else BULK_NICE, None),
        ]

    def _new_pool(self, lane: _Lane) -> Executor:
        if self.threads:
            return ThreadPoolExecutor(
                max_workers=lane.size,
                thread_name_prefix=f"labelloop-{lane.name}",
                initializer=_init_thread_worker,
                initargs=(self.rt,),
            )
        return ProcessPoolExecutor(
            max_workers=lane.size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.rt.settings, os.getpid(), self._folder.dir, lane.nice),
        )

    def start(self) -> None:
        if not self.threads and not self._folder.held:
            self._folder.acquire()
        self._stopping = False
        # Fresh hand-over state (a backend may be started again after a stop); what was queued is
        # in the store and is enqueued again below.
        with self._cond:
            self._heap = []
        self._lanes = self._make_lanes()
        self._ready.clear()
        self._start_error = None
        backbones.preload()  # predictions run in this (the API) process
        for lane in self._lanes:
            lane.pool = self._new_pool(lane)
        self._thread = threading.Thread(target=self._dispatch, name="labelloop-jobs", daemon=True)
        self._thread.start()
        patience = self.rt.settings.local_start_timeout_s
        if not self._ready.wait(patience):
            raise RuntimeError(
                f"the worker processes did not start in {patience:.0f} s "
                "(a busy machine: raise LABELLOOP_LOCAL_START_TIMEOUT_S)"
            )
        if self._start_error is not None:
            raise self._start_error
        with self.rt.session() as s:
            leftover = s.scalars(
                select(Job.id).where(Job.state.in_(ACTIVE_JOB_STATES)).order_by(Job.id)
            ).all()
        self.enqueue(list(leftover))

    def stop(self) -> None:
        """Stop at once: abandon running jobs (they run again at the next start)."""
        with self._cond:
            self._stopping = True
            # Before the workers end (their futures then leave the table).
            abandoned = {j: at for j, (_, at, _) in self._inflight.items()}
            self._cond.notify_all()
        pools = [lane.pool for lane in self._lanes]
        for lane in self._lanes:
            lane.pool = None
        for pool in pools:
            if isinstance(pool, ProcessPoolExecutor):
                self._terminate(pool)
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self._thread is not None:
            self._thread.join(timeout=STOP_GRACE_S)
        if abandoned and not self.threads:
            try:
                with self.rt.session() as s:
                    back = release(s, abandoned)
                if back:
                    log.info(
                        "stopped while running jobs %s; they run again at the next start", back
                    )
            except Exception:  # the store may be what failed; the jobs resume as after a crash
                log.warning("could not put back the jobs %s", sorted(abandoned), exc_info=True)
        if self._folder.held:
            stop_stale_workers(self._folder.dir)  # the files of the workers just ended
            self._folder.release()

    @staticmethod
    def _terminate(pool: ProcessPoolExecutor) -> None:
        """End the worker processes now (SIGTERM, then SIGKILL after a grace period), so that a
        stop never waits for a job: one that was running is run again at the next start."""
        procs = [p for p in getattr(pool, "_processes", {}).values() if p.is_alive()]
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(STOP_GRACE_S)
            if p.is_alive():
                p.kill()
                p.join(STOP_GRACE_S)

    def enqueue(self, job_ids: Sequence[int]) -> None:
        ids = [int(j) for j in job_ids]
        if not ids:
            return
        with self.rt.session() as s:
            kinds = dict(s.execute(select(Job.id, Job.kind).where(Job.id.in_(ids))).all())
        with self._cond:
            for job_id in ids:
                if job_id in kinds:
                    kind = KINDS.get(kinds[job_id])
                    entry = (kind.priority if kind else 9, next(self._seq), job_id)
                    heapq.heappush(self._heap, entry)
            self._cond.notify_all()

    def _warm(self) -> None:
        """Start and warm every worker now, not on the first label (the first model would wait).

        Called from the dispatcher thread, like every later submission: worker processes are
        started by the thread that submits, and die with it (``PR_SET_PDEATHSIG``), so they are
        all children of this long-lived thread.
        """
        try:
            warm = []
            for lane in self._lanes:
                assert lane.pool is not None
                warm.append([lane.pool.submit(_noop) for _ in range(lane.size)])
            # The start waits for the bulk workers only (as many processes as before the training
            # lane): the training worker finishes starting meanwhile, and a training that comes
            # before it is up waits for it or takes a free bulk worker.
            for fut in warm[-1]:
                fut.result(timeout=self.rt.settings.local_start_timeout_s)
        except BaseException as exc:
            self._start_error = exc
        finally:
            self._ready.set()

    def _next(self) -> tuple[int, _Lane] | None:
        """Under ``_cond``: the most urgent waiting job that a free worker may take, and that
        worker's lane (the training lane first for a training); None when none can start now.

        The heap is ordered by priority, so a training job waiting is always at its top: it
        starts as soon as either lane has a free worker, whatever bulk work is queued.
        """
        if not self._heap:
            return None
        priority, _, job_id = self._heap[0]
        for lane in self._lanes:
            if lane.admits(priority):
                heapq.heappop(self._heap)
                return job_id, lane
        return None

    def _dispatch(self) -> None:
        """Hand jobs to the workers by priority, never more than a lane has workers.

        A pool's own queue is first-come-first-served; keeping jobs here until a worker is free
        lets a training job overtake a backlog of featurization and prediction, and the training
        lane lets it start without waiting for a bulk job to end.
        """
        self._warm()
        while True:
            with self._cond:
                picked = self._next()
                while picked is None and not self._stopping:
                    self._cond.wait()
                    picked = self._next()
                if self._stopping or picked is None:
                    return
                job_id, lane = picked
                if job_id in self._inflight or lane.pool is None:
                    continue
                try:
                    fut = lane.pool.submit(_run, job_id)
                except (BrokenProcessPool, RuntimeError):
                    self._replace_pool(lane)
                    assert lane.pool is not None
                    fut = lane.pool.submit(_run, job_id)
                lane.busy += 1
                self._inflight[job_id] = (fut, utcnow(), lane)
            fut.add_done_callback(functools.partial(self._done, job_id))

    def _replace_pool(self, lane: _Lane) -> None:
        """A new pool for a broken one (a worker died); the old one's threads and queues go."""
        old, lane.pool = lane.pool, self._new_pool(lane)
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def _done(self, job_id: int, fut: Future[list[int]]) -> None:
        with self._cond:
            entry = self._inflight.pop(job_id, None)
            lane = entry[2] if entry is not None else None
            if lane is not None:
                lane.busy -= 1
            self._cond.notify_all()
        if self._stopping:
            return
        try:
            self.enqueue(fut.result())
        except BrokenProcessPool:
            log.warning("a worker process died while running job %s; running it again", job_id)
            with self._cond:
                # The first of the broken pool's jobs to get here replaces it.
                if lane is not None and getattr(lane.pool, "_broken", False) and not self._stopping:
                    self._replace_pool(lane)
            self.enqueue([job_id])
        except Unavailable as exc:
            # Nothing could be recorded: the job stays as it is and runs again shortly.
            log.warning(
                "job %s: %s; running it again in %.0f s", job_id, exc.message, RETRY_AFTER_S
            )
            timer = threading.Timer(RETRY_AFTER_S, self.enqueue, args=([job_id],))
            timer.daemon = True
            timer.start()
        except Exception:
            # execute() records every failure of the job itself; this is a failure to record it.
            log.exception("job %s failed and could not be recorded", job_id)

    def predict_data(
        self, spec: TaskSpec, version: int, data: Sequence[str]
    ) -> list[DataPrediction]:
        return prediction.predict_data(self.rt, spec, version, data)

    def predict_items(
        self, spec: TaskSpec, version: int, item_ids: Sequence[int]
    ) -> ItemPredictions:
        return prediction.predict_stored(self.rt, spec, version, item_ids)

    def known(self) -> set[int]:
        """Job ids waiting here or running in the workers (``serve --processes``: what the
        supervisor need not be handed again, :mod:`labelloop.jobs.forward`)."""
        with self._cond:
            return {job_id for _, _, job_id in self._heap} | set(self._inflight)

    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes, the training lane's included (empty for threads)."""
        return [pid for lane in self._lanes for pid in self._pids(lane.pool)]

    def lane_pids(self) -> dict[str, list[int]]:
        """Process ids of each lane's workers (``train``, ``bulk``)."""
        return {lane.name: self._pids(lane.pool) for lane in self._lanes}

    @staticmethod
    def _pids(pool: Executor | None) -> list[int]:
        if not isinstance(pool, ProcessPoolExecutor):
            return []
        return [p.pid for p in getattr(pool, "_processes", {}).values() if p.pid is not None]

    def status(self) -> dict[str, Any]:
        with self._cond:
            inflight = sorted(self._inflight)
            queued = len(self._heap)
            lanes = {lane.name: {"workers": lane.size, "busy": lane.busy} for lane in self._lanes}
        return {
            "backend": self.name,
            "workers": self.workers,
            "queued": queued,
            "running": inflight,
            "lanes": lanes,
        }
