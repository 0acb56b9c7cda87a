"""The FastAPI application: OpenAPI at ``/docs``, the API under ``/api/v1``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from labelloop import __version__
from labelloop.api import errors
from labelloop.api.deps import require_token
from labelloop.api.middleware import BodyLimit
from labelloop.api.routes import export, items, labelling, models, predictions, tasks, workers
from labelloop.runtime import Runtime

API_PREFIX = "/api/v1"


def create_app(rt: Runtime, *, manage_jobs: bool = True) -> FastAPI:
    """The app over a runtime; with ``manage_jobs`` the app starts and stops the job backend."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_jobs and rt.has_jobs:
            rt.jobs.start()
        try:
            yield
        finally:
            if manage_jobs and rt.has_jobs:
                rt.jobs.stop()

    app = FastAPI(
        title="labelloop",
        version=__version__,
        description="Model-assisted labelling that gets better while people label.",
        lifespan=lifespan,
    )
    app.state.rt = rt
    app.add_middleware(BodyLimit, max_bytes=rt.settings.max_request_bytes)
    errors.install(app)
    secured = [Depends(require_token)]
    for module in (tasks, items, labelling, predictions, models, export, workers):
        app.include_router(module.router, prefix=API_PREFIX, dependencies=secured)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, Any]:
        from sqlalchemy import text

        from labelloop.store.db import translate_db_errors

        with translate_db_errors(), rt.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        jobs = rt.jobs.status() if rt.has_jobs else {"backend": None}
        return {"status": "ok", "version": __version__, "jobs": jobs}

    return app
