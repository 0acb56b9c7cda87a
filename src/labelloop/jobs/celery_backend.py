"""The cluster backend: jobs go to Celery workers by role, predictions are RPCs to inference workers.

The store stays the source of truth for jobs: a job is published only after the transaction that
created it has committed, and one that cannot be published (the broker is away) stays queued in the
store and is published again as soon as the broker answers, or at the next start.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from amqp.exceptions import AMQPError
from celery import Celery
from kombu.entity import Queue
from kombu.exceptions import KombuError
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import select

from labelloop.errors import LabelloopError, Timeout, Unavailable
from labelloop.jobs.base import DataPrediction, ItemPredictions, JobBackend
from labelloop.jobs.celery_app import (
    DEAD_QUEUE,
    JOB_TASKS,
    PREDICT_DATA,
    PREDICT_ITEMS,
    ROLES,
    STATUS_COMMAND,
    declare_queues,
    make_app,
)
from labelloop.jobs.state import JobState
from labelloop.loop.executor import QUEUES
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Job

log = logging.getLogger(__name__)
T = TypeVar("T")

#: What a broker that is down or unreachable raises, from kombu, py-amqp or the socket.
BROKER_ERRORS: tuple[type[Exception], ...] = (KombuError, AMQPError, OSError)

#: How long an answer of :meth:`CeleryJobs.status` serves again (the dashboard, ``/health`` and
#: ``/metrics`` ask at once; each fresh answer waits a second for the workers' replies).
STATUS_TTL_S = 1.0

#: How long a worker keeps trying to publish follow-up jobs while the broker is away.
PATIENCE_S = 600.0


def _error_class(code: str) -> type[LabelloopError]:
    todo: list[type[LabelloopError]] = [LabelloopError]
    while todo:
        cls = todo.pop()
        if cls.code == code:
            return cls
        todo.extend(cls.__subclasses__())
    return LabelloopError


def raise_remote(error: dict[str, Any]) -> None:
    """An error a worker sent back as JSON, raised again here as the same kind of error."""
    cls = _error_class(str(error.get("code", "")))
    raise cls(str(error.get("message", "the inference worker failed")))


class CeleryJobs(JobBackend):
    name = "celery"

    def __init__(self, rt: Runtime, app: Celery | None = None, *, patient: bool = False) -> None:
        self.rt = rt
        self.app = app if app is not None else make_app(rt.settings, worker=False)
        # A worker waits for the broker when publishing follow-ups; the API must not block.
        self.patient = patient
        # Every failover URL without its password (kombu's sanitiser masks only the first).
        self.broker = ";".join(maybe_sanitize_url(u) for u in rt.settings.broker_url.split(";"))
        self._queues: dict[str, Queue] = {q.name: q for q in self.app.conf.task_queues}
        self._unsent: dict[int, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: ReplyListener | None = None
        self._status: tuple[float, dict[str, Any]] | None = None
        self._status_lock = threading.Lock()
        # Predict requests: same broker, no publisher confirms (their time-out covers a loss).
        self._rpc = make_app(rt.settings, worker=False, confirm=False) if app is None else self.app

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Declare the queues, publish jobs the store holds as queued, start the re-sender."""
        try:
            declare_queues(self.app, self.rt.settings)
        except BROKER_ERRORS as exc:
            log.warning(
                "the broker %s is not reachable yet (%s); will keep trying", self.broker, exc
            )
        with self.rt.session() as s:
            queued = s.execute(
                select(Job.id, Job.kind).where(Job.state == JobState.QUEUED).order_by(Job.id)
            ).all()
        # A job published twice is harmless (jobs are idempotent); one never published is lost.
        self._send_all(
            {int(i): self._queue_of(k) for i, k in queued if self._queue_of(k)}, resending=True
        )
        self._stopping.clear()
        self._thread = threading.Thread(target=self._resend, name="labelloop-resend", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        # Broker connections stay in kombu's process-wide pools (other apps of this process may
        # share them); they close with the process.
        self.app.close()
        self._rpc.close()

    # -- jobs -----------------------------------------------------------------------------------
    @staticmethod
    def _queue_of(kind: str) -> str:
        return QUEUES.get(kind, "")

    def enqueue(self, job_ids: Sequence[int]) -> None:
        ids = [int(j) for j in job_ids]
        if not ids:
            return
        with self.rt.session() as s:
            kinds = dict(s.execute(select(Job.id, Job.kind).where(Job.id.in_(ids))).all())
        todo: dict[int, str] = {}
        for job_id in ids:
            queue = self._queue_of(kinds.get(job_id, ""))
            if queue:
                todo[job_id] = queue
            elif job_id in kinds:
                log.error("job %s has kind %r, which no queue runs", job_id, kinds[job_id])
        if self.patient:
            self._send_patiently(todo)
        else:
            self._send_all(todo)

    def _publish(self, job_id: int, queue: str) -> None:
        self.app.send_task(
            JOB_TASKS[queue], args=[job_id], queue=self._queues[queue], ignore_result=True
        )

    def _send_all(self, todo: dict[int, str], *, resending: bool = False) -> bool:
        """Publish now; what the broker does not take waits for the re-sender."""
        if not resending:
            with self._lock:
                if self._unsent:
                    # The broker is known to be away: no request waits for it to fail again.
                    self._unsent.update(todo)
                    return False
        for n, (job_id, queue) in enumerate(todo.items()):
            try:
                self._publish(job_id, queue)
            except BROKER_ERRORS as exc:
                rest = dict(list(todo.items())[n:])
                with self._lock:
                    self._unsent.update(rest)
                log.warning(
                    "broker %s unavailable (%s): %d job(s) stay queued in the store and are "
                    "published when it is back",
                    self.broker,
                    exc,
                    len(rest),
                )
                self._wake.set()
                return False
        return True

    def _send_patiently(self, todo: dict[int, str]) -> None:
        deadline = time.monotonic() + PATIENCE_S
        pause = 0.5
        while todo:
            job_id, queue = next(iter(todo.items()))
            try:
                self._publish(job_id, queue)
                del todo[job_id]
            except BROKER_ERRORS as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "broker %s unavailable for %.0f s (%s): jobs %s stay queued in the "
                        "store and are published at the next API start",
                        self.broker,
                        PATIENCE_S,
                        exc,
                        sorted(todo),
                    )
                    return
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _resend(self) -> None:
        pause = 0.5
        while not self._stopping.is_set():
            self._wake.wait(timeout=pause)
            self._wake.clear()
            with self._lock:
                todo, self._unsent = self._unsent, {}
            if not todo:
                pause = 5.0
                continue
            if self._send_all(todo, resending=True):
                log.info("broker %s is back: published %d waiting job(s)", self.broker, len(todo))
                pause = 0.5
            else:
                pause = min(max(pause, 0.5) * 2, 5.0)
                self._wake.clear()

    @property
    def unsent(self) -> list[int]:
        """Jobs waiting for the broker to come back."""
        with self._lock:
            return sorted(self._unsent)

    # -- predictions (the inference RPC) --------------------------------------------------------
    def predict_data(
        self, spec: TaskSpec, version: int, data: Sequence[str]
    ) -> list[DataPrediction]:
        chunks = self._chunks(list(data))
        answers = self._call_all(PREDICT_DATA, [[spec.id, int(version), c] for c in chunks])
        return [DataPrediction(**p) for answer in answers for p in answer["predictions"]]

    def predict_items(
        self, spec: TaskSpec, version: int, item_ids: Sequence[int]
    ) -> ItemPredictions:
        chunks = self._chunks([int(i) for i in item_ids])
        answers = self._call_all(PREDICT_ITEMS, [[spec.id, int(version), c] for c in chunks])
        rows = [
            {**r, "created_at": datetime.fromisoformat(r["created_at"])}
            for answer in answers
            for r in answer["rows"]
        ]
        failed = {int(k): str(v) for answer in answers for k, v in answer["failed"].items()}
        return ItemPredictions(int(answers[0]["version"]), rows, failed)

    def _chunks(self, values: list[T]) -> list[list[T]]:
        """Split a large request so that several inference processes answer it in parallel."""
        size = self.rt.settings.predict_chunk_items
        if len(values) < 2 * size:
            return [values]
        parts = len(values) // size
        step = -(-len(values) // parts)
        return [values[i : i + step] for i in range(0, len(values), step)]

    def _replies(self) -> ReplyListener:
        with self._lock:
            if self._listener is None:
                self._listener = ReplyListener(self.app, self.broker)
            listener = self._listener
        listener.ensure_running()
        return listener

    def _call_all(self, name: str, calls: list[list[Any]]) -> list[dict[str, Any]]:
        """Send each ``(task, version, items)`` to the inference queue; wait for every answer."""
        timeout = self.rt.settings.predict_timeout_s
        replies = self._replies()
        task_ids = [str(uuid.uuid4()) for _ in calls]
        waiters = [replies.expect(task_id) for task_id in task_ids]
        try:
            try:
                for task_id, args in zip(task_ids, calls, strict=True):
                    self._rpc.send_task(
                        name,
                        args=args,
                        task_id=task_id,
                        queue=self._queues["inference"],
                        reply_to=replies.name,
                        # Nobody waits for an answer after this: the broker drops the request,
                        # and a worker that took it too late skips it.
                        expires=timeout,
                    )
            except BROKER_ERRORS as exc:
                raise Unavailable(f"the job broker {self.broker} is not reachable: {exc}") from None
            deadline = time.monotonic() + timeout
            bodies = [w.wait(max(0.0, deadline - time.monotonic())) for w in waiters]
        finally:
            for task_id in task_ids:
                replies.forget(task_id)
        return [self._answer(body, timeout) for body in bodies]

    def _answer(self, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        """One worker's reply as a result, or the error the client should get."""
        if body is None:
            if self._consumers("inference") == 0:
                raise Unavailable(
                    "no inference worker is running: start one with "
                    "`labelloop worker --role inference`"
                )
            raise Timeout(f"no inference worker answered within {timeout:g} s")
        status = body.get("status")
        if status == "SUCCESS" and isinstance(body.get("result"), dict):
            answer: dict[str, Any] = body["result"]
            if "error" in answer:
                raise_remote(answer["error"])
            return answer
        if status == "REVOKED":
            raise Timeout(f"no inference worker took the request within {timeout:g} s")
        failure = body.get("result") or {}
        kind = failure.get("exc_type", status) if isinstance(failure, dict) else status
        # The worker's process died or hit its time limit: say so, without its traceback.
        raise Unavailable(f"the inference worker failed to answer: {kind}")

    # -- operations -----------------------------------------------------------------------------
    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Ready messages and consumers of every queue (a missing queue counts as empty)."""
        out: dict[str, dict[str, int]] = {}
        with self.app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            for name in (*ROLES, DEAD_QUEUE):
                channel = conn.channel()
                try:
                    _, messages, consumers = channel.queue_declare(queue=name, passive=True)
                    out[name] = {"ready": int(messages), "consumers": int(consumers)}
                except conn.channel_errors:
                    out[name] = {"ready": 0, "consumers": 0}
                finally:
                    with contextlib.suppress(*BROKER_ERRORS):
                        channel.close()
        return out

    def _consumers(self, queue: str) -> int:
        try:
            return self.queue_depths()[queue]["consumers"]
        except BROKER_ERRORS:
            return 0

    def workers(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        """Live workers (those that answer within ``timeout``): roles, queues, current jobs."""
        replies = self.app.control.broadcast(STATUS_COMMAND, reply=True, timeout=timeout) or []
        out = []
        for reply in replies:
            for name, info in reply.items():
                if not isinstance(info, dict) or "queues" not in info:
                    continue
                roles = [q for q in info["queues"] if q in ROLES]
                out.append({"name": name, "roles": roles, **info})
        self._annotate_jobs(out)
        return sorted(out, key=lambda w: (w["roles"], w["name"]))

    def _annotate_jobs(self, workers: list[dict[str, Any]]) -> None:
        ids = [a["job_id"] for w in workers for a in w["active"] if "job_id" in a]
        if not ids:
            return
        with self.rt.session() as s:
            jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        for w in workers:
            for a in w["active"]:
                job = jobs.get(a.get("job_id", -1))
                if job is not None:
                    a |= {"kind": job.kind, "task_id": job.task_id, "key": job.key}
                    if (job.payload or {}).get("world"):
                        a["world"] = job.payload["world"]

    def status(self) -> dict[str, Any]:
        """Workers and queues; callers within :data:`STATUS_TTL_S` share one broadcast."""
        with self._status_lock:
            cached = self._status
            if cached is not None and time.monotonic() - cached[0] < STATUS_TTL_S:
                return copy.deepcopy(cached[1])
            out = self._fresh_status()
            self._status = (time.monotonic(), out)
            return copy.deepcopy(out)

    def _fresh_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.name, "broker": self.broker}
        try:
            out["queues"] = self.queue_depths()
            # Messages waiting in the role queues (the metric the local pool reports as well).
            out["queued"] = sum(out["queues"][q]["ready"] for q in ROLES)
            out["workers"] = self.workers()
            out["broker_ok"] = True
        except BROKER_ERRORS as exc:
            out |= {"broker_ok": False, "error": f"broker not reachable: {exc}", "workers": []}
        out["running"] = sorted(
            a["job_id"] for w in out["workers"] for a in w["active"] if "job_id" in a
        )
        out["unsent_jobs"] = self.unsent
        return out


class _Waiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.body: dict[str, Any] | None = None
        self.lost: str | None = None

    def wait(self, timeout: float) -> dict[str, Any] | None:
        self.event.wait(timeout)
        if self.lost is not None:
            raise Unavailable(self.lost)
        return self.body


class ReplyListener:
    """The API process's one reply queue, drained by one thread: the client side of ``rpc://``.

    Workers publish each answer to the request's ``reply_to`` queue with the request's id as the
    correlation id (Celery's ``rpc://`` result backend). One exclusive queue and one connection
    serve every request thread of the process; Celery's own client keeps a queue and a connection
    per thread, and a reply could be lost to the consumer of a thread that had ended. When the
    connection drops, the requests waiting on it fail at once (503) instead of timing out, and the
    listener reconnects, with a new queue, as soon as the broker answers.
    """

    def __init__(self, app: Celery, broker: str) -> None:
        self.app = app
        self.broker = broker
        self.name = f"labelloop.reply.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error = "not connected yet"

    def ensure_running(self, wait: float = 2.0) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, name="labelloop-replies", daemon=True
                )
                self._thread.start()
        if not self._connected.wait(wait):
            raise Unavailable(f"the job broker {self.broker} is not reachable: {self._error}")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def expect(self, task_id: str) -> _Waiter:
        waiter = _Waiter()
        with self._lock:
            self._waiters[task_id] = waiter
        return waiter

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._waiters.pop(task_id, None)

    def _on_reply(self, body: Any, message: Any) -> None:
        task_id = message.properties.get("correlation_id") or (
            body.get("task_id") if isinstance(body, dict) else None
        )
        if not isinstance(body, dict) or body.get("status") not in (
            "SUCCESS",
            "FAILURE",
            "REVOKED",
        ):
            return  # an intermediate state; the final one follows
        with self._lock:
            waiter = self._waiters.pop(str(task_id), None)
        if waiter is not None:
            waiter.body = body
            waiter.event.set()

    def _fail_waiting(self, reason: str) -> None:
        with self._lock:
            waiters, self._waiters = list(self._waiters.values()), {}
        for waiter in waiters:
            waiter.lost = reason
            waiter.event.set()

    def _run(self) -> None:
        pause = 0.2
        while not self._stopping.is_set():
            try:
                with self.app.connection_for_read(heartbeat=10) as conn:
                    conn.ensure_connection(max_retries=1)
                    queue = Queue(self.name, durable=False, exclusive=True, auto_delete=True)  # type: ignore[no-untyped-call]
                    with conn.Consumer(
                        [queue], callbacks=[self._on_reply], accept=["json"], no_ack=True
                    ):
                        if pause > 0.2:
                            log.info("reply queue on %s is back", self.broker)
                        self._connected.set()
                        pause = 0.2
                        while not self._stopping.is_set():
                            # Busy or idle, the broker must hear from us (a no-ack consumer
                            # sends nothing else); the check itself keeps to the heartbeat rate.
                            conn.heartbeat_check()
                            with contextlib.suppress(TimeoutError):
                                conn.drain_events(timeout=1.0)
            except BROKER_ERRORS as exc:
                self._connected.clear()
                self._error = str(exc) or type(exc).__name__
                self._fail_waiting(
                    f"lost the job broker {self.broker} while waiting for an inference worker"
                )
                log.warning("reply queue on %s lost (%s); reconnecting", self.broker, self._error)
                self._stopping.wait(pause)
                pause = min(pause * 2, 5.0)
        self._connected.clear()
