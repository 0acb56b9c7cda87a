"""The cluster backend: jobs go to Celery workers by role, predictions are RPCs to inference workers.

The store stays the source of truth for jobs: a job is published only after the transaction that
created it has committed, and one that cannot be published (the broker is away) stays queued in the
store and is published again as soon as the broker answers, or at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from amqp.exceptions import AMQPError
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from kombu.entity import Queue
from kombu.exceptions import KombuError
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import select

from labelloop.errors import LabelloopError, Timeout, Unavailable
from labelloop.jobs.base import JobBackend
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
from labelloop.loop.prediction import DataPrediction, ItemPredictions
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Job

log = logging.getLogger(__name__)

#: What a broker that is down or unreachable raises, from kombu, py-amqp or the socket.
BROKER_ERRORS: tuple[type[Exception], ...] = (KombuError, AMQPError, OSError)
#: What waiting for an answer raises when the broker went away (Celery gives up with RuntimeError).
RESULT_ERRORS: tuple[type[Exception], ...] = (RuntimeError, *BROKER_ERRORS)

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
        self.app = app if app is not None else make_app(rt.settings)
        # A worker waits for the broker when publishing follow-ups; the API must not block.
        self.patient = patient
        self.broker = maybe_sanitize_url(rt.settings.broker_url)
        self._queues: dict[str, Queue] = {q.name: q for q in self.app.conf.task_queues}
        self._unsent: dict[int, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Declare the queues, publish jobs the store holds as queued, start the re-sender."""
        try:
            declare_queues(self.app)
        except BROKER_ERRORS as exc:
            log.warning(
                "the broker %s is not reachable yet (%s); will keep trying", self.broker, exc
            )
        with self.rt.session() as s:
            queued = s.execute(
                select(Job.id, Job.kind).where(Job.state == "queued").order_by(Job.id)
            ).all()
        # A job published twice is harmless (jobs are idempotent); one never published is lost.
        self._send_all({int(i): self._queue_of(k) for i, k in queued if self._queue_of(k)})
        self._stopping.clear()
        self._thread = threading.Thread(target=self._resend, name="labelloop-resend", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.app.pool.force_close_all()
        except Exception:  # closing connections to a broker that is gone may fail; nothing to keep
            log.debug("closing broker connections failed", exc_info=True)

    # -- jobs -----------------------------------------------------------------------------------
    @staticmethod
    def _queue_of(kind: str) -> str:
        from labelloop.loop.executor import QUEUES

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

    def _send_all(self, todo: dict[int, str]) -> bool:
        """Publish now; what the broker does not take waits for the re-sender."""
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
            if self._send_all(todo):
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
        answer = self._call(PREDICT_DATA, [spec.id, int(version), list(data)])
        return [DataPrediction(**p) for p in answer["predictions"]]

    def predict_items(
        self, spec: TaskSpec, version: int, item_ids: Sequence[int]
    ) -> ItemPredictions:
        answer = self._call(PREDICT_ITEMS, [spec.id, int(version), [int(i) for i in item_ids]])
        rows = [
            {**r, "created_at": datetime.fromisoformat(r["created_at"])} for r in answer["rows"]
        ]
        failed = {int(k): str(v) for k, v in answer["failed"].items()}
        return ItemPredictions(int(answer["version"]), rows, failed)

    def _call(self, name: str, args: list[Any]) -> dict[str, Any]:
        timeout = self.rt.settings.predict_timeout_s
        try:
            result = self.app.send_task(
                name, args=args, queue=self._queues["inference"], expires=timeout
            )
        except BROKER_ERRORS as exc:
            self._reset_results()
            raise Unavailable(f"the job broker {self.broker} is not reachable: {exc}") from None
        try:
            answer: dict[str, Any] = result.get(timeout=timeout)
        except CeleryTimeout:
            self._forget(result)
            if self._consumers("inference") == 0:
                raise Unavailable(
                    "no inference worker is running: start one with "
                    "`labelloop worker --role inference`"
                ) from None
            raise Timeout(f"no inference worker answered within {timeout:g} s") from None
        except RESULT_ERRORS as exc:
            self._reset_results()
            raise Unavailable(
                f"lost the job broker {self.broker} while waiting for an inference worker: {exc}"
            ) from None
        except Exception as exc:  # the worker's process died or hit its time limit
            raise Unavailable(
                f"the inference worker failed to answer: {type(exc).__name__}"
            ) from None
        if "error" in answer:
            raise_remote(answer["error"])
        return answer

    def _forget(self, result: Any) -> None:
        try:
            self.app.backend.remove_pending_result(result)
        except Exception:  # bookkeeping only
            log.debug("could not drop a pending result", exc_info=True)

    def _reset_results(self) -> None:
        """Drop this thread's result consumer after a broker error; the next call builds a new one.

        Celery keeps one result backend per thread; after the broker went away its consumer may be
        left on a dead connection that it cannot rebuild by itself.
        """
        local = self.app._local
        backend = getattr(local, "backend", None)
        if backend is None:
            return
        try:
            backend.result_consumer.stop()
        except Exception:
            log.debug("closing a dead result consumer failed", exc_info=True)
        with contextlib.suppress(AttributeError):
            del local.backend

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

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.name, "broker": self.broker}
        try:
            out["queues"] = self.queue_depths()
            out["workers"] = self.workers()
            out["broker_ok"] = True
        except BROKER_ERRORS as exc:
            out |= {"broker_ok": False, "error": f"broker not reachable: {exc}", "workers": []}
        out["unsent_jobs"] = self.unsent
        return out
