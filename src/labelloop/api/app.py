"""The FastAPI application: OpenAPI at ``/docs``, the API under ``/api/v1``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text

from labelloop import __version__
from labelloop.api import errors
from labelloop.api.deps import annotator_may, require_backend_token, require_token
from labelloop.api.middleware import BodyLimit
from labelloop.api.routes import (
    annotators,
    browse,
    export,
    imports,
    info,
    items,
    labelling,
    labelstudio,
    models,
    predictions,
    progress,
    tasks,
    workers,
)
from labelloop.labelstudio import writer as labelstudio_writer
from labelloop.observability import CONTENT_TYPE_LATEST, Metrics, RequestMetrics
from labelloop.runtime import Runtime
from labelloop.schemas import Health
from labelloop.store.db import translate_db_errors
from labelloop.web.docs import install_docs

API_PREFIX = "/api/v1"
LABELSTUDIO_PREFIX = "/labelstudio"
STATIC = Path(__file__).resolve().parent.parent / "web" / "static"


def create_app(rt: Runtime, *, manage_jobs: bool = True) -> FastAPI:
    """The app over a runtime; with ``manage_jobs`` the app starts and stops the job backend."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = rt.settings.api_threads
        if manage_jobs and rt.has_jobs:
            rt.jobs.start()
        try:
            yield
        finally:
            labelstudio_writer.close(rt)  # Label Studio's tasks and pre-labels not yet written
            if manage_jobs and rt.has_jobs:
                rt.jobs.stop()

    app = FastAPI(
        title="labelloop",
        version=__version__,
        description="Model-assisted labelling that gets better while people label.",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_docs, below
        redoc_url=None,
    )
    app.state.rt = rt
    metrics = Metrics(rt)
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=rt.settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, mounts=("/ui",))
    errors.install(app)
    secured = [Depends(require_token)]
    modules = [tasks, items, browse, labelling, predictions, progress, models, export, imports]
    modules += [info, annotators]
    if rt.has_jobs and rt.jobs.name == "celery":
        modules.append(workers)  # only a server in cluster mode has cluster workers
    for module in modules:
        app.include_router(module.router, prefix=API_PREFIX, dependencies=secured)
    app.include_router(
        labelstudio.router,
        prefix=LABELSTUDIO_PREFIX,
        dependencies=[Depends(require_backend_token)],
    )
    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")
    install_docs(app)
    errors.document_forbidden(app, API_PREFIX, annotator_may)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        """The dashboard is the front page."""
        return RedirectResponse("/ui/")

    @app.get(
        "/metrics",
        tags=["health"],
        dependencies=secured,
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus' text exposition format.",
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            },
            **errors.responses(401),
        },
    )
    def prometheus() -> Response:
        """Prometheus metrics: requests, latencies, jobs, queue depth, training, edit rates."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", tags=["health"], response_model=Health, responses=errors.responses(503))
    def health() -> Health:
        """The store answers; the job backend's status."""
        with translate_db_errors(), rt.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        jobs: dict[str, Any] = rt.jobs.status() if rt.has_jobs else {"backend": None}
        return {"status": "ok", "version": __version__, "jobs": jobs}

    return app
