"""A Celery worker of the cluster mode: runs stored jobs of its role and answers predict requests.

``labelloop worker --role R`` calls :func:`run_worker`. The app's configuration (queues, limits)
is :mod:`labelloop.jobs.celery_app`; follow-up jobs are published through the same backend the API
uses (:class:`labelloop.jobs.celery_backend.CeleryJobs`, patient: a worker waits for a broker that
went away).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sklearn.svm  # noqa: F401  (the first job should not pay for imports)
from celery import Celery
from celery.exceptions import Reject, TimeLimitExceeded
from celery.signals import task_failure, worker_process_init
from celery.worker import state as worker_state
from celery.worker.control import control_command, inspect_command
from threadpoolctl import threadpool_limits

from labelloop.cluster.gate import wait_for_gate
from labelloop.config import Settings
from labelloop.distributed.launch import JOIN_COMMAND
from labelloop.distributed.world import World, spawn_rank
from labelloop.errors import InvalidInput, LabelloopError, Unavailable
from labelloop.jobs.celery_app import (
    JOB_TASKS,
    PREDICT_DATA,
    PREDICT_ITEMS,
    RABBITMQ_CONSUMER_TIMEOUT_S,
    ROLE_DEFAULTS,
    ROLES,
    STATUS_COMMAND,
    declare_queues,
    make_app,
    soft_limit,
)
from labelloop.jobs.celery_backend import CeleryJobs
from labelloop.learners import backbones
from labelloop.loop.executor import HEAVY_RUNNERS, KINDS, execute, job_kind
from labelloop.loop.prediction import predict_data as predict_data_links
from labelloop.loop.prediction import predict_stored
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import WORKER_NAME_ENV, Runtime
from labelloop.service.common import task_spec
from labelloop.store.db import dispose_after_fork, migrate

log = logging.getLogger(__name__)


class WorkerState:
    """The runtime of this worker process, built on first use and rebuilt after a fork.

    A prefork child inherits its parent's pooled database connections; it disposes of them (without
    closing the parent's sockets) and opens its own.
    """

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.app = app
        self._rt: Runtime | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def runtime(self) -> Runtime:
        with self._lock:
            if self._rt is not None and self._pid != os.getpid():
                dispose_after_fork(self._rt.engine)
                self._rt = None
            if self._rt is None:
                rt = Runtime(self.settings)
                rt.attach_jobs(CeleryJobs(rt, self.app, patient=True))
                self._rt, self._pid = rt, os.getpid()
            return self._rt


class SpecCache:
    """Task settings by id for predict requests, re-read at most every ``ttl`` seconds.

    A task's labels, category and policy do not change after it is created; the version a
    request asks for comes with the request. Caching saves a store round trip per request.
    """

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._entries: dict[int, tuple[float, TaskSpec]] = {}
        self._lock = threading.Lock()

    def get(self, rt: Runtime, task_id: int) -> TaskSpec:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(task_id)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        spec = task_spec(rt, task_id)
        with self._lock:
            if len(self._entries) > 1000:
                self._entries.clear()
            self._entries[task_id] = (now, spec)
        return spec


def _answer(state: WorkerState, work: Callable[[Runtime], dict[str, Any]]) -> dict[str, Any]:
    """Run a predict request; errors travel back as plain JSON with their code, never a pickle."""
    try:
        return work(state.runtime())
    except LabelloopError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}
    except Exception as exc:
        log.exception("predict request failed")
        return {
            "error": {
                "code": "internal_error",
                "message": f"the inference worker on {socket.gethostname()} failed: "
                f"{type(exc).__name__}",
            }
        }


def register_tasks(app: Celery, state: WorkerState) -> None:
    """The tasks a worker runs: stored jobs by queue, and the two predict requests."""
    settings = state.settings

    def run_job(job_id: int) -> list[int]:
        rt = state.runtime()
        try:
            # Records the job's own failures (it ends `failed` with its error).
            follow = execute(rt, int(job_id))
        except Unavailable as exc:
            # The store is not answering: give the job back rather than lose it (after a pause,
            # so that a worker does not spin on a broker redelivering it at once).
            log.warning("job %s: %s; requeued", job_id, exc.message)
            time.sleep(2.0)
            raise Reject(exc.message, requeue=True) from None
        if follow:
            rt.jobs.enqueue(follow)
        return follow

    # Not shared: each app gets the tasks of its own worker state (Celery would otherwise hand the
    # functions of the first app registered in the process to every later one).
    common: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True, "shared": False}
    for queue, name in JOB_TASKS.items():
        hard = settings.train_time_limit_s if queue == "train" else settings.job_time_limit_s
        app.task(
            name=name,
            time_limit=hard,
            soft_time_limit=soft_limit(hard),
            ignore_result=True,
            **common,
        )(run_job)

    specs = SpecCache()

    def predict_data(task_id: int, version: int, data: list[str]) -> dict[str, Any]:
        def work(rt: Runtime) -> dict[str, Any]:
            answers = predict_data_links(rt, specs.get(rt, int(task_id)), int(version), list(data))
            return {"version": int(version), "predictions": [asdict(a) for a in answers]}

        return _answer(state, work)

    def predict_items(task_id: int, version: int, item_ids: list[int]) -> dict[str, Any]:
        def work(rt: Runtime) -> dict[str, Any]:
            got = predict_stored(rt, specs.get(rt, int(task_id)), int(version), item_ids)
            rows = [
                {k: (v.isoformat() if k == "created_at" else v) for k, v in row.items()}  # type: ignore[attr-defined]
                for row in got.rows
            ]
            return {
                "version": got.version,
                "rows": rows,
                "failed": {str(k): v for k, v in got.failed.items()},
            }

        return _answer(state, work)

    predict_hard = max(1, int(settings.predict_timeout_s * 3))
    for name, fun in ((PREDICT_DATA, predict_data), (PREDICT_ITEMS, predict_items)):
        app.task(
            name=name,
            time_limit=predict_hard,
            soft_time_limit=soft_limit(predict_hard),
            ignore_result=False,
            **common,
        )(fun)


def _on_hard_time_limit(state: WorkerState) -> Callable[..., None]:
    """What the worker's main process does when a job's process was killed at its hard limit.

    A training job goes back to the queue: its claim counts attempts and gives up (recording the
    failure and starting the pending run) after the loop's attempt limit. Other jobs are recorded
    as failed.
    """

    def handler(
        sender: Any = None,
        exception: BaseException | None = None,
        args: Any = None,
        **_: Any,
    ) -> None:
        name = getattr(sender, "name", None)
        if not isinstance(exception, TimeLimitExceeded) or name not in JOB_TASKS.values():
            return
        if not args:
            return
        job_id = int(args[0])
        try:
            rt = state.runtime()
            kind = job_kind(rt, job_id)
            if kind == "train":
                rt.jobs.enqueue([job_id])
            elif kind in KINDS:
                follow = KINDS[kind].on_failure(
                    rt, job_id, f"hard time limit exceeded ({exception})"
                )
                rt.jobs.enqueue(follow)
        except LabelloopError as exc:
            log.error("job %s hit its hard time limit and could not be recorded: %s", job_id, exc)

    return handler


def _describe(request: Any) -> dict[str, Any]:
    args = list(getattr(request, "args", None) or [])
    out: dict[str, Any] = {"task": request.name, "id": request.id}
    started = getattr(request, "time_start", None)
    if started:
        out["running_s"] = round(time.time() - float(started), 3)
    if request.name in JOB_TASKS.values() and args:
        out["job_id"] = int(args[0])
    elif request.name in (PREDICT_DATA, PREDICT_ITEMS) and len(args) >= 3:
        out["task_id"], out["version"], out["items"] = int(args[0]), int(args[1]), len(args[2])
    return out


class HostedRanks:
    """Rank processes this worker started for other workers' training jobs (distributed fits)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ranks: dict[int, tuple[subprocess.Popen[bytes], World, int]] = {}

    def start(self, world: World, rank: int) -> int:
        proc = spawn_rank(
            world, rank, Path(world.folder) / "logs" / f"attempt-{world.attempt}-rank-{rank}.log"
        )
        with self.lock:
            self.ranks[proc.pid] = (proc, world, rank)
        # Reaped by a thread of its own: the worker's main loop never waits for a rank.
        threading.Thread(target=self._reap, args=(proc,), daemon=True, name="rank-reaper").start()
        return proc.pid

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        with self.lock:
            self.ranks.pop(proc.pid, None)

    def describe(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {"fit": w.run, "attempt": w.attempt, "rank": r, "size": w.size, "pid": pid}
                for pid, (_, w, r) in sorted(self.ranks.items())
            ]


HOSTED = HostedRanks()
#: The data folder of this worker (join requests name folders inside it only); set at start.
_DATA_DIR: list[Path] = []


@control_command(name=JOIN_COMMAND, args=[("world", str), ("rank", int)])  # type: ignore[untyped-decorator]
def labelloop_train_join(state: Any, world: str, rank: int) -> dict[str, Any]:
    """Host one rank of another train worker's distributed fit (labelloop.distributed.launch)."""
    consumer = state.consumer
    queues = [q.name for q in consumer.task_consumer.queues] if consumer.task_consumer else []
    if "train" not in queues:
        return {"error": "not a train worker"}
    try:
        spec = World.from_json(world)
        folder = Path(spec.folder).resolve()
        if _DATA_DIR and not folder.is_relative_to(_DATA_DIR[0]):
            return {"error": "the fit's folder is outside this worker's data folder"}
        return {"pid": HOSTED.start(spec, int(rank))}
    except (TypeError, ValueError, OSError) as exc:
        return {"error": f"cannot start the rank: {exc}"}


@inspect_command(name=STATUS_COMMAND)  # type: ignore[untyped-decorator]
def labelloop_status(state: Any) -> dict[str, Any]:
    """One answer per worker for ``labelloop workers``: its queues, pool and current work."""
    consumer = state.consumer
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer.task_consumer else []
    controller = getattr(consumer, "controller", None)
    return {
        "queues": queues,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "pool": type(consumer.pool).__module__.rsplit(".", 1)[-1] if consumer.pool else None,
        "concurrency": getattr(controller, "concurrency", None),
        "prefetch": consumer.qos.value if consumer.qos else None,
        "active": [_describe(r) for r in list(worker_state.active_requests)],
        "ranks": HOSTED.describe(),
        "processed": sum(worker_state.total_count.values()),
    }


def default_hostname(role: str) -> str:
    """``<role>-<pid>@<host>``: several workers of one role can run on one host."""
    return f"{role}-{os.getpid()}@{socket.gethostname()}"


def run_worker(
    settings: Settings,
    role: str,
    *,
    concurrency: int | None = None,
    hostname: str | None = None,
    pool: str | None = None,
    loglevel: str = "INFO",
) -> None:
    """Start a worker for one role; returns when it stops (SIGTERM: finish current jobs first)."""
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    defaults = ROLE_DEFAULTS[role]
    if concurrency is not None and concurrency < 1:
        raise InvalidInput("--concurrency must be at least 1")
    if role == "train" and settings.train_time_limit_s >= RABBITMQ_CONSUMER_TIMEOUT_S:
        log.warning(
            "LABELLOOP_TRAIN_TIME_LIMIT_S is %s s: make sure the broker's consumer_timeout is "
            "above it (RabbitMQ's default is %s s), or it will take running jobs away",
            settings.train_time_limit_s,
            RABBITMQ_CONSUMER_TIMEOUT_S,
        )
    _DATA_DIR[:] = [settings.data_dir.resolve()]
    wait_for_gate()  # started by an agent: imports done, now wait for its node to be ready
    # Several processes may start at once; migrations are serialised by the store.
    migrate(settings.resolved_database_url)
    # Inference workers publish answers only (re-prediction jobs have no follow-ups).
    app = make_app(settings, confirm=role != "inference")
    state = WorkerState(settings, app)
    register_tasks(app, state)
    try:
        declare_queues(app, settings)
    except Exception as exc:  # the worker retries the broker itself; this is only a head start
        log.warning("could not declare queues yet (%s); the worker keeps trying", exc)

    def warm(**_: Any) -> None:
        state.runtime()
        if role == "train":  # the runners' scikit-learn and learners, outside any time limit
            for module in HEAVY_RUNNERS:
                importlib.import_module(module)
        # The sentence encoder is not loaded here: loading torch in every data and inference
        # process at start kept them from answering for tens of seconds on a busy machine (a
        # cluster's first predictions timed out); it loads with the first text task's job.
        if role == "inference":
            # The image backbone (torch and the network: seconds of CPU), once per process,
            # outside any request's time limit: a prediction has seconds. Data and train jobs
            # have minutes: theirs loads with the first job that needs it, so a cluster's start
            # does not pay for it in every worker at once.
            backbones.preload()
            # One native thread per process: a predict request is small, and OpenMP threads that
            # wait for each other on a busy machine cost more than they give. Inference scales
            # with processes (--concurrency) and workers instead.
            threadpool_limits(limits=1)

    if role == "inference" and loglevel.upper() != "DEBUG":
        # A line per request would drown the log; failures are still logged (DEBUG shows all).
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)

    worker_process_init.connect(warm, weak=False)
    task_failure.connect(_on_hard_time_limit(state), weak=False)
    name = hostname or default_hostname(role)
    os.environ[WORKER_NAME_ENV] = name  # inherited by the pool: jobs record who ran them
    argv = [
        "worker",
        f"--queues={role}",
        f"--hostname={name}",
        f"--concurrency={concurrency or defaults.concurrency}",
        f"--pool={pool or defaults.pool}",
        f"--prefetch-multiplier={defaults.prefetch}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if (pool or defaults.pool) == "solo":
        warm()
    app.worker_main(argv)
