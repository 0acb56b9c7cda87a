"""What this server is: its version, its mode, and which optional endpoints it has.

The dashboard asks once when it opens, instead of polling endpoints that a single server does not
have (the cluster's workers and machines).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from labelloop import __version__
from labelloop.api.deps import runtime
from labelloop.runtime import Runtime

router = APIRouter(tags=["health"])
Rt = Annotated[Runtime, Depends(runtime)]


class ServerInfo(BaseModel):
    version: str
    mode: Literal["embedded", "cluster"] = Field(
        description="embedded: jobs run in this server's own worker processes; "
        "cluster: on Celery workers"
    )
    jobs: str | None = Field(description="the job backend (local, celery), null when none")
    endpoints: dict[str, bool] = Field(
        description="optional endpoints, by name: whether this server has them "
        "(cluster_workers, cluster_machines)"
    )


OPTIONAL = {
    "cluster_workers": "/api/v1/cluster/workers",
    "cluster_machines": "/api/v1/cluster/machines",
}


@router.get("/info", response_model=ServerInfo)
def server_info(request: Request, rt: Rt) -> ServerInfo:
    """The server's version and mode, and which optional endpoints it has."""
    paths = request.app.openapi().get("paths", {})
    backend = rt.jobs.name if rt.has_jobs else None
    return ServerInfo(
        version=__version__,
        mode="cluster" if backend == "celery" else "embedded",
        jobs=backend,
        endpoints={name: path in paths for name, path in OPTIONAL.items()},
    )
