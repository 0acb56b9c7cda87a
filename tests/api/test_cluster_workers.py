"""``GET /api/v1/cluster/workers`` and ``labelloop workers``: who runs jobs, and how deep the
queues are. The Celery case runs a real ``labelloop worker --role inference`` process."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from labelloop.api.app import create_app
from labelloop.cli import app as cli
from labelloop.config import Settings
from labelloop.jobs.celery_backend import CeleryJobs
from labelloop.runtime import Runtime
from tests.celery_support import HOST, Cluster, wait_for


def test_there_are_no_cluster_workers_in_the_embedded_default(app_client: TestClient) -> None:
    r = app_client.get("/api/v1/cluster/workers")
    assert r.status_code == 404 and r.json()["error"] == "http_error"  # no such endpoint
    assert app_client.get("/health").json()["jobs"]["backend"] == "local"


@pytest.mark.rabbitmq
def test_celery_workers_and_queues_are_listed(tmp_path: Path, broker_vhost: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker_url=broker_vhost, jobs="celery")
    rt = Runtime(settings, migrate_schema=True)
    rt.attach_jobs(CeleryJobs(rt))
    cluster = Cluster(tmp_path, broker_vhost, settings.resolved_database_url, tmp_path)
    name = f"inference-api-{tmp_path.name[-6:]}"
    node = cluster.start_worker("inference", name, "--concurrency", "2")
    env = {
        "LABELLOOP_BROKER_URL": broker_vhost,
        "LABELLOOP_DATA_DIR": str(tmp_path / "data"),
    }
    try:
        with TestClient(create_app(rt)) as c:

            def listed() -> dict[str, object] | None:
                body = c.get("/api/v1/cluster/workers").json()
                return body if any(w["name"] == node for w in body["workers"]) else None

            body = wait_for(listed, 120, "the worker to answer", poll=0.5)
            assert body["backend"] == "celery" and body["broker_ok"] is True
            assert "guest:guest" not in str(body)
            worker = next(w for w in body["workers"] if w["name"] == node)
            assert worker["roles"] == ["inference"] and worker["queues"] == ["inference"]
            assert worker["pool"] == "prefork" and worker["concurrency"] == 2
            assert worker["host"] == HOST and worker["active"] == []
            assert body["queues"]["inference"]["consumers"] >= 1
            assert set(body["queues"]) == {"data", "train", "inference", "dead"}
            assert body["queued"] == 0  # ready messages in the role queues
            metrics = c.get("/metrics").text
            assert 'labelloop_backend_queue_depth{backend="celery"} 0.0' in metrics

        runner = CliRunner()
        as_json = runner.invoke(cli, ["workers", "--json"], env=env)
        assert as_json.exit_code == 0, as_json.output
        assert node in as_json.output
        table = runner.invoke(cli, ["workers"], env=env)
        assert table.exit_code == 0 and "inference" in table.output and "queues" in table.output
    finally:
        cluster.stop()
        rt.close()

    # A broker that is away: a message and a non-zero exit, never a traceback.
    away = CliRunner().invoke(
        cli, ["workers"], env={**env, "LABELLOOP_BROKER_URL": "amqp://127.0.0.1:1//"}
    )
    assert away.exit_code == 2 and "not reachable" in away.output
    assert "Traceback" not in away.output
