"""A broker that goes away and comes back: the API and the workers carry on without a restart.

The broker is a RabbitMQ node this test starts itself (own node name, ports, HOME and folders),
never the machine's shared one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from labelloop.client import ApiError, ClientError
from tests.celery_support import HOST, Cluster, RabbitNode, pg_database
from tests.support import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]


def test_api_and_workers_reconnect_after_a_broker_outage(
    tmp_path: Path, digit_files: list[tuple[str, str]], image_root: Path
) -> None:
    node = RabbitNode(tmp_path / "rabbit", "labelloop-outage")
    node.start()
    try:
        with pg_database() as db:
            c = Cluster(tmp_path / "cluster", node.url, db, image_root)
            try:
                _outage(c, node, digit_files)
            finally:
                c.stop()
    finally:
        node.cleanup()


def _outage(c: Cluster, node: RabbitNode, digit_files: list[tuple[str, str]]) -> None:
    client = c.start_api(LABELLOOP_PREDICT_TIMEOUT_S="5")
    names = {"data": "data-1", "train": "train-1", "inference": "inference-1"}
    for role, name in names.items():
        c.start_worker(role, name)
    c.wait_workers(client, *names.values())
    pids = {name: c.workers[name].pid for name in names.values()}

    links = digit_files[:120]
    task = client.create_task(
        "digits", "image-classification", [str(d) for d in range(10)], policy={"min_labels": 20}
    )
    t = task["id"]
    items = [it["id"] for it in client.add_items(t, [{"data": p} for p, _ in links])["items"]]
    wait_until(lambda: client.get_task(t)["counts"]["pending"] == 0, 120, "featurize jobs")
    client.annotate(t, [{"item_id": i, "labels": [links[n][1]]} for n, i in enumerate(items[:20])])
    client.wait_for_training(t, timeout=300)
    assert client.get_task(t)["served_version"] == 0
    assert client.predict(t, [links[-1][0]])["model_version"] == 0

    node.stop()
    wait_until(lambda: not node.accepting(), 60, "the broker to stop")

    # While it is away: predictions fail at once with a clear 503, labels are still taken, and
    # the training job they trigger waits in the store.
    started = time.monotonic()
    with pytest.raises(ApiError) as err:
        client.predict(t, [links[-1][0]])
    assert err.value.status == 503 and "broker" in err.value.detail
    assert "guest:guest" not in err.value.detail
    assert time.monotonic() - started < 5
    answer = client.annotate(
        t, [{"item_id": i, "labels": [links[n + 20][1]]} for n, i in enumerate(items[20:40])]
    )
    assert answer["training_triggered"] and answer["training_job"] is not None
    job_id = answer["training_job"]
    status = client._request("GET", "/api/v1/cluster/workers")
    assert status["broker_ok"] is False and job_id in status["unsent_jobs"]
    assert client.get_task(t)["served_version"] == 0

    node.start()

    # Nothing restarted: the API publishes the waiting job, the workers reconnect and run it.
    task_after = wait_until(
        lambda: (lambda x: x if not x["training"] and x["served_version"] == 1 else None)(
            client.get_task(t)
        ),
        300,
        "the training job queued during the outage to finish",
        poll=0.5,
    )
    assert task_after["served_version"] == 1
    job = next(j for j in client.jobs(t) if j["id"] == job_id)
    assert job["state"] == "done"

    def predicts() -> bool:
        try:
            return bool(client.predict(t, [links[-1][0]])["model_version"] == 1)
        except ClientError:
            return False

    wait_until(predicts, 60, "predictions through the queue again", poll=0.5)
    # Every request after the first good one goes through.
    for p, _ in links[60:80]:
        assert client.predict(t, [p])["model_version"] == 1
    assert {w["name"] for w in c.live_workers(client).values()} >= {
        f"{n}@{HOST}" for n in names.values()
    }
    assert {name: c.workers[name].pid for name in names.values()} == pids
    assert all(c.workers[name].poll() is None for name in names.values())
