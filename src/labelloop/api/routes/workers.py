"""Operations of the cluster mode: the workers that run jobs, and the depth of their queues.

Registered only when the server runs its jobs on Celery (``LABELLOOP_JOBS=celery``); a server in
the embedded default has no such endpoint (its local pool is described by ``/health``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from labelloop.api.deps import RuntimeDep
from labelloop.api.errors import responses
from labelloop.schemas import WorkersStatus

router = APIRouter(tags=["cluster"])


@router.get("/cluster/workers", response_model=WorkersStatus, responses=responses(401, 503))
def list_workers(rt: RuntimeDep) -> dict[str, Any]:
    """Live Celery workers with their roles, queues and current jobs, and the queues' depths."""
    return rt.jobs.status()
