"""Operations of the cluster mode: the workers that run jobs, and the depth of their queues.

Registered only when the server runs its jobs on Celery (``LABELLOOP_JOBS=celery``); a server in
the embedded default has no such endpoint (its local pool is described by ``/health``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from labelloop.api.deps import runtime
from labelloop.runtime import Runtime

router = APIRouter(tags=["cluster"])
Rt = Annotated[Runtime, Depends(runtime)]


@router.get("/cluster/workers")
def list_workers(rt: Rt) -> dict[str, Any]:
    """Live Celery workers with their roles, queues and current jobs, and the queues' depths."""
    return rt.jobs.status()
