"""GET /api/v1/info: the server's mode and optional endpoints, asked once by the dashboard."""

from __future__ import annotations

from fastapi.testclient import TestClient

from labelloop import __version__
from labelloop.api.app import create_app
from labelloop.jobs.local import LocalJobs
from labelloop.runtime import Runtime


def test_a_single_server_says_it_has_no_cluster(app_client: TestClient) -> None:
    r = app_client.get("/api/v1/info")
    assert r.status_code == 200
    assert r.json() == {
        "version": __version__,
        "mode": "embedded",
        "jobs": "local",
        "endpoints": {"cluster_workers": False, "cluster_machines": False},
    }
    assert app_client.get("/api/v1/cluster/workers").status_code == 404


class NamedCelery(LocalJobs):
    """Local threads under Celery's name: the app then mounts the cluster's endpoints."""

    name = "celery"


def test_a_server_in_cluster_mode_lists_its_cluster_endpoints(rt: Runtime) -> None:
    rt.attach_jobs(NamedCelery(rt, workers=1, threads=True))
    with TestClient(create_app(rt)) as c:
        info = c.get("/api/v1/info").json()
    assert info["mode"] == "cluster" and info["jobs"] == "celery"
    assert info["endpoints"]["cluster_workers"] is True
