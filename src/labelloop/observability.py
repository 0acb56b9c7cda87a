"""Prometheus metrics for operators, all in this module, served at ``/metrics``.

Requests and latencies are counted by an ASGI middleware. Everything else (jobs by state, queue
depth, training time, versions and promotions, edit rate) is read from the store when Prometheus
scrapes, by a custom collector: the loop is not instrumented, so these figures stay true whichever
process (API, local worker, Celery worker on another machine) did the work.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labelloop import fetch
from labelloop.jobs.state import JobState
from labelloop.loop.retention import PRUNED
from labelloop.runtime import Runtime
from labelloop.store.models import Annotation, Item, Job, ModelVersion, Task

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "quiet_libraries"]

#: Set before any worker starts (spawned workers inherit them), and before the libraries that read
#: them are imported: model loading (sentence embeddings) draws no progress bars into the log.
QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",
}


def quiet_libraries(level: str) -> None:
    """Keep the server's log to what it does: no schema-migration chatter at INFO (Alembic's
    plugins and "Context impl SQLiteImpl."), no progress bars of libraries loading models."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if logging.getLevelName(level.upper()) != logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def fetch_failures() -> Metric:
    """Reads of data links that failed in this process (the API: Label Studio's /predict, the
    pages, and jobs on threads), by cause; items that failed in any process are
    ``labelloop_items{status="failed"}``, each with its reason in the item browser."""
    family = CounterMetricFamily(
        "labelloop_fetch_failures",
        "Data links that could not be read, by cause (unreachable, http_401, timeout...)",
        labels=["cause"],
    )
    for cause, n in sorted(fetch.fetch_failures().items()):
        family.add_metric([cause], n)
    return family


class StoreCollector(Collector):
    """Figures gathered from the store at scrape time (a few aggregate queries)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        with self.rt.session() as s:
            families = [*_job_families(s), *_model_families(s), *_label_families(s)]
        yield from families
        yield fetch_failures()
        if self.rt.has_jobs:
            yield from _backend_families(self.rt.jobs.status())


def _job_families(s: Session) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "labelloop_jobs", "Jobs in the store by kind and state", labels=["kind", "state"]
    )
    queue = GaugeMetricFamily(
        "labelloop_queue_depth", "Jobs waiting to run, by kind", labels=["kind"]
    )
    for kind, state, n in s.execute(
        select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
    ):
        jobs.add_metric([kind, state], n)
        if state == JobState.QUEUED:
            queue.add_metric([kind], n)
    return [jobs, queue]


def _model_families(s: Session) -> list[Metric]:
    train_time = CounterMetricFamily(
        "labelloop_training_seconds", "Time spent training model versions", labels=["task"]
    )
    last_train = GaugeMetricFamily(
        "labelloop_last_training_seconds", "Training time of the newest version", labels=["task"]
    )
    versions = CounterMetricFamily(
        "labelloop_model_versions", "Model versions trained", labels=["task"]
    )
    promoted = CounterMetricFamily(
        "labelloop_versions_promoted", "Versions promoted when trained", labels=["task"]
    )
    promotions = CounterMetricFamily(
        "labelloop_promotions", "Promotions of a task, rollbacks included", labels=["task"]
    )
    served = GaugeMetricFamily(
        "labelloop_served_version", "The version that serves (-1: none yet)", labels=["task"]
    )
    # Counters never go down: versions that retention pruned (their rows stay) still count.
    for task_id, total, count in s.execute(
        select(ModelVersion.task_id, func.sum(ModelVersion.train_seconds), func.count())
        .where(ModelVersion.status.in_(("ready", PRUNED)))
        .group_by(ModelVersion.task_id)
    ):
        train_time.add_metric([str(task_id)], float(total or 0.0))
        versions.add_metric([str(task_id)], count)
    newest = (
        select(ModelVersion.task_id, func.max(ModelVersion.version).label("v"))
        .where(ModelVersion.status == "ready")
        .group_by(ModelVersion.task_id)
        .subquery()
    )
    for task_id, seconds in s.execute(
        select(ModelVersion.task_id, ModelVersion.train_seconds).join(
            newest,
            (ModelVersion.task_id == newest.c.task_id) & (ModelVersion.version == newest.c.v),
        )
    ):
        if seconds is not None:
            last_train.add_metric([str(task_id)], float(seconds))
    for task_id, n in s.execute(
        select(ModelVersion.task_id, func.count())
        .where(ModelVersion.promoted.is_(True))
        .group_by(ModelVersion.task_id)
    ):
        promoted.add_metric([str(task_id)], n)
    for task_id, version, n in s.execute(select(Task.id, Task.served_version, Task.promotions)):
        served.add_metric([str(task_id)], -1 if version is None else version)
        promotions.add_metric([str(task_id)], n or 0)
    return [train_time, last_train, versions, promoted, promotions, served]


def _label_families(s: Session) -> list[Metric]:
    edit_rate = GaugeMetricFamily(
        "labelloop_edit_rate",
        "Share of submitted labels that differed from the pre-label shown",
        labels=["task"],
    )
    submitted = CounterMetricFamily(
        "labelloop_labels_submitted",
        "Human labels submitted (edit rate denominator)",
        labels=["task"],
    )
    items = GaugeMetricFamily("labelloop_items", "Items by status", labels=["task", "status"])
    totals: dict[int, list[int]] = {}
    for task_id, edited, n in s.execute(
        select(Annotation.task_id, Annotation.edited, func.count())
        .where(Annotation.source == "human", Annotation.edited.is_not(None))
        .group_by(Annotation.task_id, Annotation.edited)
    ):
        row = totals.setdefault(task_id, [0, 0])
        row[0] += n if edited else 0
        row[1] += n
    for task_id, (n_edited, n_total) in sorted(totals.items()):
        submitted.add_metric([str(task_id)], n_total)
        if n_total:
            edit_rate.add_metric([str(task_id)], n_edited / n_total)
    for task_id, status, n in s.execute(
        select(Item.task_id, Item.status, func.count()).group_by(Item.task_id, Item.status)
    ):
        items.add_metric([str(task_id), status], n)
    return [edit_rate, submitted, items]


def _backend_families(status: dict[str, Any]) -> list[Metric]:
    depth = status.get("queued")
    if not isinstance(depth, int):
        return []
    backend = GaugeMetricFamily(
        "labelloop_backend_queue_depth",
        "Jobs handed to the job backend and not yet running",
        labels=["backend"],
    )
    backend.add_metric([str(status.get("backend"))], depth)
    return [backend]


class Metrics:
    """The app's registry: request counters filled by :meth:`middleware`, the store collector."""

    def __init__(self, rt: Runtime) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "labelloop_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "labelloop_http_request_duration_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StoreCollector(rt))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(path: str, route: str, params: dict[str, Any]) -> str:
    """The whole template of a request's route: the matched route's path (relative to the router
    it was included with) after the prefix the request's path has in front of it.

    A prefix segment that holds a path parameter's value is named like the parameter.
    """
    if ":path}" in route:  # a parameter spanning segments: the route's own path is bounded
        return route
    actual = path.rstrip("/").split("/")
    own = route.rstrip("/").split("/")
    if len(own) > len(actual):
        return route
    names = {str(v): k for k, v in params.items() if f"{{{k}" not in route}
    prefix = [f"{{{names[p]}}}" if p in names else p for p in actual[: len(actual) - len(own) + 1]]
    full = "/".join(prefix + own[1:]) or "/"
    return full + "/" if route.endswith("/") and not full.endswith("/") else full


class RequestMetrics:
    """ASGI middleware: counts each request and its latency under its route template, not its path."""

    def __init__(self, app: ASGIApp, metrics: Metrics, mounts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.mounts = mounts

    def template(self, scope: Scope, root_path: str = "") -> str:
        """``/api/v1/tasks/{task_id}/items/{item_id}`` for ``/api/v1/tasks/3/items/3``.

        The label comes from the route that matched (the router records it in the scope), not
        from the values in the path, so two parameters with the same value cannot be mistaken
        for each other. Unmatched paths share one label, so that scanners cannot grow the series
        without bound; a mounted app (the static UI, the docs' assets) is counted under its mount
        point (a mount extends the scope's ``root_path``).
        """
        path = str(scope.get("path", ""))
        for mount in self.mounts:
            if path == mount or path.startswith(mount + "/"):
                return mount
        route = getattr(scope.get("route"), "path", None)
        if isinstance(route, str) and route:
            return route_template(path, route, scope.get("path_params") or {})
        mounted = str(scope.get("root_path", ""))
        if mounted.startswith(root_path) and len(mounted) > len(root_path):
            return mounted[len(root_path) :]
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        root_path = str(scope.get("root_path", ""))
        try:
            await self.app(scope, receive, sending)
        finally:
            template = self.template(scope, root_path)
            method = str(scope.get("method", "GET"))
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
