"""What this server is: its version, its mode, and which optional endpoints it has.

The dashboard asks once when it opens, instead of polling endpoints that a single server does not
have (the cluster's workers and machines).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from labelloop import __version__
from labelloop.api.deps import RuntimeDep
from labelloop.api.errors import responses
from labelloop.schemas import ServerInfo

router = APIRouter(tags=["health"])


OPTIONAL = {
    "cluster_workers": "/api/v1/cluster/workers",
    "cluster_machines": "/api/v1/cluster/machines",
}


@router.get("/info", response_model=ServerInfo, responses=responses(401))
def server_info(request: Request, rt: RuntimeDep) -> ServerInfo:
    """The server's version and mode, and which optional endpoints it has."""
    paths = request.app.openapi().get("paths", {})
    backend = rt.jobs.name if rt.has_jobs else None
    return {
        "version": __version__,
        "mode": "cluster" if backend == "celery" else "embedded",
        "jobs": backend,
        "endpoints": {name: path in paths for name, path in OPTIONAL.items()},
    }
