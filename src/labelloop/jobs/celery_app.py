"""The Celery app of the cluster mode: one queue per worker role, and delivery you can trust.

Queues ``data`` (fetch, decode, featurize), ``train`` (fit, evaluate, promote) and ``inference``
(predict, re-predict) are durable quorum queues with a delivery limit: a job survives the loss of a
broker node, and a job that keeps killing its workers is dead-lettered instead of looping forever.
Messages carry ids only. Every stored job runs through :func:`labelloop.loop.executor.execute`,
which re-reads state and is idempotent, so late acknowledgement (a job is acknowledged once it has
run, and requeued if its worker dies) may deliver a job twice without harm.

Synchronous predictions are the seed's inference RPC: ``(task, version, items)`` goes to the
``inference`` queue, any inference worker answers with exactly that version, and the answer comes
back over ``rpc://`` as plain JSON.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery
from celery.exceptions import Reject, TimeLimitExceeded
from celery.signals import task_failure, worker_process_init
from celery.worker.consumer import Consumer
from celery.worker.control import inspect_command
from kombu.entity import Exchange, Queue

from labelloop.config import Settings
from labelloop.errors import ConfigError, InvalidInput, LabelloopError, Unavailable
from labelloop.learners import backbones
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import WORKER_NAME_ENV, Runtime

log = logging.getLogger(__name__)

ROLES = ("data", "train", "inference")
EXCHANGE = "labelloop"
DEAD_EXCHANGE = "labelloop.dead"
DEAD_QUEUE = "dead"

#: The Celery task that runs a stored job, by queue: each queue has its own time limits.
JOB_TASKS = {
    "data": "labelloop.data_job",
    "train": "labelloop.train_job",
    "inference": "labelloop.inference_job",
}
PREDICT_DATA = "labelloop.predict_data"
PREDICT_ITEMS = "labelloop.predict_items"
STATUS_COMMAND = "labelloop_status"
#: RabbitMQ's default consumer time-out: a job held longer than this is taken away from its worker.
RABBITMQ_CONSUMER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class RoleDefaults:
    """How a worker of a role runs when its command line says nothing else."""

    concurrency: int
    #: Messages reserved per process: 1 for training, so a queued training job never waits
    #: behind a running one while another train worker is idle.
    prefetch: int
    pool: str


ROLE_DEFAULTS = {
    "train": RoleDefaults(concurrency=1, prefetch=1, pool="prefork"),
    "data": RoleDefaults(concurrency=1, prefetch=1, pool="prefork"),
    # Predict requests are short and independent: one process per core, like Celery's default.
    "inference": RoleDefaults(concurrency=os.cpu_count() or 1, prefetch=1, pool="prefork"),
}


def soft_limit(hard: int) -> int:
    """The soft time limit before a hard one: time for the job to fail cleanly and say why."""
    return max(1, hard - max(5, hard // 10))


def task_queues(settings: Settings) -> list[Queue]:
    """The three role queues (durable; quorum where the broker has them) and the dead letters."""
    exchange = Exchange(EXCHANGE, type="direct", durable=True)  # type: ignore[no-untyped-call]
    args: dict[str, Any] = {"x-dead-letter-exchange": DEAD_EXCHANGE}
    if settings.broker_queue_type == "quorum":
        args |= {"x-queue-type": "quorum", "x-delivery-limit": settings.broker_delivery_limit}
    return [
        Queue(name, exchange, routing_key=name, durable=True, queue_arguments=dict(args))  # type: ignore[no-untyped-call]
        for name in ROLES
    ]


def dead_letter_queue() -> Queue:
    """Where a message goes after its delivery limit: kept for an operator, never consumed."""
    exchange = Exchange(DEAD_EXCHANGE, type="fanout", durable=True)  # type: ignore[no-untyped-call]
    return Queue(DEAD_QUEUE, exchange, durable=True)  # type: ignore[no-untyped-call]


class LabelloopConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer without native delayed delivery.

    Celery sets up delayed-delivery exchanges and queues whenever it sees quorum queues; labelloop
    never schedules a task for later, so a worker skips that (and its dozens of broker objects).
    """

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps = [s for s in Consumer.Blueprint.default_steps if "DelayedDelivery" not in s]


def make_app(settings: Settings, *, worker: bool = True, confirm: bool = True) -> Celery:
    """A Celery app for these settings (the API, the CLI and the workers each make their own).

    Workers answer predict requests through the ``rpc://`` result backend (a message to the
    request's reply queue); the API side reads those answers with its own reply listener
    (:class:`labelloop.jobs.celery_backend.ReplyListener`), so it needs no result backend.
    ``confirm`` turns on publisher confirms: every process that publishes jobs has them; predict
    requests and answers, which a time-out covers anyway, go without (a round trip less).
    """
    if not settings.result_backend.startswith("rpc://"):
        raise ConfigError(
            "LABELLOOP_RESULT_BACKEND must be rpc://: predictions come back on the API's reply queue"
        )
    backend = settings.result_backend if worker else "disabled"
    app = Celery("labelloop", broker=settings.broker_url, backend=backend)
    app.conf.update(
        task_queues=task_queues(settings),
        task_default_queue="data",
        task_create_missing_queues=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Late acknowledgement, and requeue when the worker process dies mid-job.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Publisher confirms: a job the broker did not take is an error, not a silent loss.
        broker_transport_options={"confirm_publish": confirm},
        broker_connection_timeout=2.0,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # workers wait for a broker that went away
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        result_persistent=False,
        task_ignore_result=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_pool_limit=50,
        worker_consumer=f"{__name__}:LabelloopConsumer",
    )
    return app


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
                from labelloop.store.db import dispose_after_fork

                dispose_after_fork(self._rt.engine)
                self._rt = None
            if self._rt is None:
                from labelloop.jobs.celery_backend import CeleryJobs

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
        from labelloop.service.common import task_spec

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


def _mark_failed(rt: Runtime, job_id: int, reason: str) -> None:
    """Record a featurize or re-prediction job that cannot finish (training records its own)."""
    from sqlalchemy import update

    from labelloop.store.models import ACTIVE_JOB_STATES, Job, utcnow

    with rt.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_(ACTIVE_JOB_STATES))
            .values(state="failed", error=reason, finished_at=utcnow())
        )


def register_tasks(app: Celery, state: WorkerState) -> None:
    """The tasks a worker runs: stored jobs by queue, and the two predict requests."""
    settings = state.settings

    def run_job(job_id: int) -> list[int]:
        from labelloop.loop.executor import execute, job_kind

        rt = state.runtime()
        try:
            follow = execute(rt, int(job_id))
        except Unavailable as exc:
            # The store is not answering: give the job back rather than lose it.
            log.warning("job %s: %s; requeued", job_id, exc.message)
            time.sleep(2.0)
            raise Reject(exc.message, requeue=True) from None
        except Exception as exc:
            # A training job records its own failures; any other job is marked failed here.
            if job_kind(rt, int(job_id)) != "train":
                _mark_failed(rt, int(job_id), f"{type(exc).__name__}: {exc}")
            raise
        if follow:
            rt.jobs.enqueue(follow)
        return follow

    common: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}
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
        from labelloop.loop.prediction import predict_data as predict

        def work(rt: Runtime) -> dict[str, Any]:
            answers = predict(rt, specs.get(rt, int(task_id)), int(version), list(data))
            return {"version": int(version), "predictions": [asdict(a) for a in answers]}

        return _answer(state, work)

    def predict_items(task_id: int, version: int, item_ids: list[int]) -> dict[str, Any]:
        from labelloop.loop.prediction import predict_stored

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
            from labelloop.loop.executor import job_kind

            rt = state.runtime()
            if job_kind(rt, job_id) == "train":
                rt.jobs.enqueue([job_id])
            else:
                _mark_failed(rt, job_id, f"hard time limit exceeded ({exception})")
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


@inspect_command(name=STATUS_COMMAND)  # type: ignore[untyped-decorator]
def labelloop_status(state: Any) -> dict[str, Any]:
    """One answer per worker for ``labelloop workers``: its queues, pool and current work."""
    from celery.worker import state as worker_state

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
        "processed": sum(worker_state.total_count.values()),
    }


def declare_queues(app: Celery) -> None:
    """Declare the exchange, the role queues and the dead-letter queue (idempotent)."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.default_channel
        dead = dead_letter_queue()
        dead(channel).declare()  # type: ignore[no-untyped-call]
        for queue in app.conf.task_queues:
            queue(channel).declare()


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
    from labelloop.store.db import migrate

    # Several processes may start at once; migrations are serialised by the store.
    migrate(settings.resolved_database_url)
    # Inference workers publish answers only (re-prediction jobs have no follow-ups).
    app = make_app(settings, confirm=role != "inference")
    state = WorkerState(settings, app)
    register_tasks(app, state)
    try:
        declare_queues(app)
    except Exception as exc:  # the worker retries the broker itself; this is only a head start
        log.warning("could not declare queues yet (%s); the worker keeps trying", exc)

    def warm(**_: Any) -> None:
        state.runtime()
        backbones.preload()  # the image backbone, once per process, outside any time limit
        import sklearn.svm  # noqa: F401  (the first job should not pay for imports)

        import labelloop.loop.executor  # noqa: F401

        if role == "inference":
            # One native thread per process: a predict request is small, and OpenMP threads that
            # wait for each other on a busy machine cost more than they give. Inference scales
            # with processes (--concurrency) and workers instead.
            from threadpoolctl import threadpool_limits

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
