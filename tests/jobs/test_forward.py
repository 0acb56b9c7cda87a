"""``serve --processes 2`` on the embedded store: the API processes hand their jobs to the one
process that runs the local workers, and stopping the server stops them all."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from labelloop.jobs import forward
from tests.support import Server, wait_until

pytestmark = pytest.mark.skipif(not forward.supported(), reason="a Linux socket hands the jobs")


def test_a_training_queued_by_an_api_process_runs_in_the_supervisors_workers(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path / "data", args=["--processes", "2"])
    try:
        client = server.up()
        task = client.create_task(
            "forwarded",
            "text-classification",
            ["pos", "neg"],
            policy={"learner_params": {"embeddings": False}},
        )
        words = ["great lovely fine good", "awful poor bad terrible"]
        added = client.add_items(
            task["id"], [{"data": f"{words[i % 2]} {i}", "external_id": f"e{i}"} for i in range(20)]
        )
        ids = [it["id"] for it in added["items"]]
        answer = client.annotate(
            task["id"],
            [{"item_id": i, "labels": ["pos" if n % 2 == 0 else "neg"]} for n, i in enumerate(ids)],
        )
        assert answer["training_triggered"]
        wait_until(
            lambda: client.get_task(task["id"])["served_version"] is not None,
            300,
            "the forwarded training to serve a model",
        )
        tree = psutil.Process(server.proc.pid).children(recursive=True)
    finally:
        server.stop()
    assert server.proc.returncode is not None

    def alive() -> list[psutil.Process]:
        left = []
        for p in tree:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
            except psutil.NoSuchProcess:
                pass
        return left

    # Told to stop with the server, the API and worker processes end on their own (they may
    # finish a moment after the server's own process): none is left running.
    wait_until(lambda: not alive(), 60, "every API and worker process to end")
