"""Several API processes over one set of local workers (``serve --processes N``, embedded).

The workers belong to one process, the supervisor that ``serve`` runs (it holds the data folder,
:mod:`labelloop.jobs.guard`); the API processes it starts answer requests, run predictions
in-process as :class:`~labelloop.jobs.local.LocalJobs` does, and hand the jobs they commit to the
supervisor as job ids on a Unix datagram socket (:class:`JobInbox`; Linux's abstract namespace,
named after the data folder, so nothing is left on disk). Job state lives in the store, so an id
that did not arrive is not lost: the supervisor also looks for queued jobs it has not been handed
every :data:`SWEEP_S` seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from labelloop.jobs.base import DataPrediction, ItemPredictions, JobBackend
from labelloop.jobs.state import ACTIVE_JOB_STATES
from labelloop.learners import backbones
from labelloop.loop import prediction
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Job

if TYPE_CHECKING:
    from labelloop.jobs.local import LocalJobs

log = logging.getLogger(__name__)

#: How often the supervisor looks in the store for queued jobs no API process handed it.
SWEEP_S = 5.0
#: Job ids per datagram at most (a datagram stays far below the socket's limit).
IDS_PER_MESSAGE = 2000


def supported() -> bool:
    """The abstract socket namespace is Linux's."""
    return sys.platform.startswith("linux")


def inbox_address(data_dir: Path) -> str:
    """The supervisor's socket, in the abstract namespace, one per data folder."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:24]
    return f"\0labelloop-jobs-{digest}"


class JobInbox:
    """The supervisor's end: job ids from the API processes, handed to its local workers."""

    def __init__(self, rt: Runtime, jobs: LocalJobs) -> None:
        self.rt = rt
        self.jobs = jobs
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(inbox_address(rt.data_dir))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._receive, name="labelloop-inbox", daemon=True),
            threading.Thread(target=self._sweep, name="labelloop-sweep", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._sock.shutdown(socket.SHUT_RDWR)  # ends the receiving thread's recv
        self._sock.close()
        for t in self._threads:
            t.join(SWEEP_S)

    def _hand(self, ids: set[int]) -> None:
        """Give the workers the jobs among ``ids`` that they do not have yet."""
        with self._lock:
            new = sorted(ids - self.jobs.known())
            if new:
                self.jobs.enqueue(new)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except OSError:
                return  # closed by stop()
            if not data:
                continue
            try:
                self._hand({int(i) for i in json.loads(data)})
            except Exception:  # a bad message or a store that did not answer: the sweep follows
                log.warning("could not queue the jobs an API process sent", exc_info=True)

    def _sweep(self) -> None:
        """Queued jobs that no message announced (one lost, or sent while the supervisor
        restarted) are handed to the workers."""
        while not self._stop.wait(SWEEP_S):
            try:
                with self.rt.reading() as s:
                    active = set(s.scalars(select(Job.id).where(Job.state.in_(ACTIVE_JOB_STATES))))
                self._hand(active)
            except Exception:
                log.warning("could not look for queued jobs", exc_info=True)


class ForwardedJobs(JobBackend):
    """An API process's backend under ``serve --processes N``: predictions here, jobs to the
    supervisor's workers."""

    name = "local"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._address = inbox_address(rt.data_dir)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._lock = threading.Lock()

    def start(self) -> None:
        backbones.preload()  # predictions run in this process

    def stop(self) -> None:
        self._sock.close()

    def enqueue(self, job_ids: Sequence[int]) -> None:
        ids = [int(j) for j in job_ids]
        for start in range(0, len(ids), IDS_PER_MESSAGE):
            message = json.dumps(ids[start : start + IDS_PER_MESSAGE]).encode()
            try:
                with self._lock:
                    self._sock.sendto(message, self._address)
            except OSError as exc:  # the supervisor restarts: its sweep finds the jobs
                log.warning("could not hand jobs to the workers' process (%s); it finds them", exc)

    def predict_data(
        self, spec: TaskSpec, version: int, data: Sequence[str]
    ) -> list[DataPrediction]:
        return prediction.predict_data(self.rt, spec, version, data)

    def predict_items(
        self, spec: TaskSpec, version: int, item_ids: Sequence[int]
    ) -> ItemPredictions:
        return prediction.predict_stored(self.rt, spec, version, item_ids)

    def status(self) -> dict[str, Any]:
        return {"backend": self.name, "workers": self.rt.settings.local_workers, "forwarded": True}
