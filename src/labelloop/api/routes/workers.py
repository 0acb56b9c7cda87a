"""Operations: the workers that run jobs, and the depth of their queues."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from labelloop.api.deps import runtime
from labelloop.runtime import Runtime

router = APIRouter(tags=["cluster"])
Rt = Annotated[Runtime, Depends(runtime)]


@router.get("/cluster/workers")
def list_workers(rt: Rt) -> dict[str, Any]:
    """Live workers with their roles, queues and current jobs, and queue depths (Celery); the
    local pool's size and running jobs (embedded default)."""
    return rt.jobs.status() if rt.has_jobs else {"backend": None, "workers": []}
