"""Cluster bootstrap times for the five-machine test topology, on this host.

One train and three inference machines (agents on 127.0.0.2 to 127.0.0.5, each with its own
RabbitMQ node started by the agent), a registered machine at 127.0.0.6 that does not answer, one
coordinator and a PostgreSQL database of the run's own; then a late machine at 127.0.0.7 joins.
Measured, per round (a fresh cluster each):

- ``agents_up_s``: from starting the four agents to all four registered (RabbitMQ start-up);
- ``init_to_serving_s``: from ``labelloop cluster init`` to every role service answering and every
  worker consuming (each listed live by every service);
- ``init_to_workers_s``: from ``labelloop cluster init`` to every Celery worker answering a ping
  through the inference master's node (the workers consume their queues; the role services may
  still be starting);
- ``total_s``: the two together: from nothing running to every worker serving;
- ``join_to_serving_s``: from ``labelloop cluster join`` (the late agent already registered) to its
  service and worker serving; ``late_agent_up_s`` is that agent's own start-up before.

    python -m bench.cluster_bootstrap               # figures for docs/BENCHMARKS.md
    python -m bench.cluster_bootstrap --rounds 1    # one round
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.celery_support import pg_database, wait_for
from tests.cluster.machines import Machines, wait_serving

TOKEN = "bench-cluster-token-0123456789"
TRAIN, INFERENCE, DEAD, LATE = (
    "127.0.0.2",
    ["127.0.0.3", "127.0.0.4", "127.0.0.5"],
    "127.0.0.6",
    "127.0.0.7",
)
OUT = Path(__file__).parent / "results" / "cluster_bootstrap.json"


def wait_workers(broker: str, answers: dict[str, dict[str, Any]], timeout: float) -> None:
    """Until every worker named in ``answers`` answers a ping through ``broker``."""
    from celery import Celery

    names = {w for a in answers.values() for w in a["workers"]}
    app = Celery("bootstrap-bench", broker=broker)

    def all_answer() -> bool:
        replies = app.control.ping(timeout=1.0) or []
        return names <= {name for reply in replies for name in reply}

    try:
        wait_for(all_answer, timeout, f"workers {sorted(names)}", poll=0.2)
    finally:
        app.close()


def one_round(root: Path) -> dict[str, Any]:
    with pg_database() as db:
        m = Machines(root, TOKEN)
        try:
            coordinator = m.start_coordinator()
            live = [TRAIN, *INFERENCE]
            t0 = time.monotonic()
            machines = {ip: m.start_agent(ip) for ip in live}
            m.wait_registered(coordinator, live, timeout=300)
            t1 = time.monotonic()
            m.register_dead(coordinator, DEAD)
            done = m.cli(
                "init", "--train", "1", "--inference", "4",
                "--task-category", "image-classification",
                "--task-datastore-path", str(root / "shared" / "task"), "--json",
                env={"LABELLOOP_DATABASE_URL": db},  # a secret: never on a command line
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(done.stdout + done.stderr)
            answers = json.loads(done.stdout)["answers"]
            master = machines[INFERENCE[0]].node.amqp_port
            wait_workers(m.broker_url(master), answers, timeout=600)
            tw = time.monotonic()
            wait_serving(answers, timeout=600)
            t2 = time.monotonic()

            m.start_agent(LATE)
            m.wait_registered(coordinator, [LATE], timeout=300)
            t3 = time.monotonic()
            done = m.cli("join", "--ip", LATE, "--json")
            if done.returncode != 0:
                raise RuntimeError(done.stdout + done.stderr)
            wait_serving(json.loads(done.stdout)["answers"], timeout=600)
            t4 = time.monotonic()
        finally:
            m.cleanup()
    return {
        "agents_up_s": round(t1 - t0, 1),
        "init_to_workers_s": round(tw - t1, 1),
        "init_to_serving_s": round(t2 - t1, 1),
        "total_s": round(t2 - t0, 1),
        "late_agent_up_s": round(t3 - t2, 1),
        "join_to_serving_s": round(t4 - t3, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rounds = []
    for n in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="ll-bootstrap-") as tmp:
            got = one_round(Path(tmp))
        print(f"round {n + 1}: {got}", flush=True)
        rounds.append(got)
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"], capture_output=True, text=True
    ).stdout
    result = {
        "topology": "1 train + 3 inference agents, 1 registered machine not answering; 1 late join",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "rabbitmq": version},
        "rounds": rounds,
        "median": {k: statistics.median(r[k] for r in rounds) for k in rounds[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))


if __name__ == "__main__":
    main()
