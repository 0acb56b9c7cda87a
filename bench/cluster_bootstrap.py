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

Each round also keeps where the time went (``timeline``): per machine, the seconds from ``init``
to its agent starting the workers and the service and to each worker's "ready" line, and the CPU
seconds each kind of process had used when everything served (psutil), with the load average.

    python -m bench.cluster_bootstrap               # figures for docs/BENCHMARKS.md
    python -m bench.cluster_bootstrap --rounds 1    # one round
    python -m bench.cluster_bootstrap --rounds 2 --against /tmp/base   # A B A B: that checkout's
                                                    # code (its src/) against this one's
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
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


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _kind(proc: psutil.Process) -> str:
    """What a process of the run is, from its command line (a forked one: its parent's)."""
    line = " ".join(proc.cmdline())
    parent = proc.parent()
    above = " ".join(parent.cmdline()) if parent is not None else ""
    if "beam.smp" in line:
        return "rabbitmq node"
    if "worker --role" in line:
        role = line.split("--role ")[1].split()[0]
        return f"{role} worker" + (" (pool process)" if "worker --role" in above else "")
    if " serve " in line:
        return "service" + (" (API process)" if " serve " in above else "")
    if "multiprocessing.spawn" in line:
        return "service (API process)"
    for name in ("agent", "coordinator"):
        if f"labelloop {name}" in line:
            return name
    return "other"


def cpu_by_kind(root: Path) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each kind of process of this run."""
    got: dict[str, float] = {}
    for proc in psutil.process_iter():
        try:
            if str(root) not in " ".join(proc.cmdline()) + " ".join(proc.environ().values()):
                continue
            times = proc.cpu_times()
            kind = _kind(proc)
        except (psutil.Error, OSError):
            continue
        if kind != "other":
            got[kind] = round(got.get(kind, 0.0) + times.user + times.system, 1)
    return dict(sorted(got.items()))


STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamps(path: Path, needle: str) -> list[float]:
    out = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        hit = STAMP.match(line)
        if hit and needle in line:
            out.append(datetime.strptime(hit.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def timeline(m: Machines, since: float) -> dict[str, dict[str, float]]:
    """Per machine: seconds from ``since`` (wall clock) to its agent's first process start and
    to each worker's "ready" line."""
    out: dict[str, dict[str, float]] = {}
    for ip, machine in m.machines.items():
        row: dict[str, float] = {}
        started = [t for t in _stamps(machine.agent_log, "supervisor: started") if t >= since]
        if started:
            row["processes_started"] = round(min(started) - since, 1)
        for log in sorted(machine.log_dir.glob("*.log")):
            ready = [t for t in _stamps(log, " ready.") if t >= since]
            if ready:
                row[f"{log.stem.split('-')[0]}_ready"] = round(min(ready) - since, 1)
        out[ip] = row
    return out


def keep_logs(root: Path, into: Path) -> None:
    """The round's logs (coordinator, agents, workers, services), without the nodes' data."""
    for log in [root / "coordinator.log", *root.glob("m-*/agent.log"), *root.glob("m-*/logs/*")]:
        target = into / log.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)


def one_round(root: Path, logs: Path | None = None) -> dict[str, Any]:
    load_start = load()
    with pg_database() as db:
        m = Machines(root, TOKEN)
        try:
            coordinator = m.start_coordinator()
            live = [TRAIN, *INFERENCE]
            t0 = time.monotonic()
            machines = {ip: m.start_agent(ip) for ip in live}
            m.wait_registered(coordinator, live, timeout=300)
            t1 = time.monotonic()
            wall1 = time.time()
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
            cpu = cpu_by_kind(root)
            where = timeline(m, wall1)
            load_serving = load()

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
            if logs is not None:
                keep_logs(root, logs)
    return {
        "agents_up_s": round(t1 - t0, 1),
        "init_to_workers_s": round(tw - t1, 1),
        "init_to_serving_s": round(t2 - t1, 1),
        "total_s": round(t2 - t0, 1),
        "late_agent_up_s": round(t3 - t2, 1),
        "join_to_serving_s": round(t4 - t3, 1),
        "load_1min": {"start": load_start, "serving": load_serving, "end": load()},
        "timeline": where,
        "cpu_s_at_serving": cpu,
    }


FIGURES = (
    "agents_up_s", "init_to_workers_s", "init_to_serving_s", "total_s", "late_agent_up_s",
    "join_to_serving_s",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--against", type=Path, default=None,
        help="another checkout: its code and this one's in turn, --rounds of each (A B A B)",
    )  # fmt: skip
    parser.add_argument("--logs", type=Path, default=None, help="keep each round's logs here")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees = {"this": here} if args.against is None else {"base": args.against, "this": here}
    before = os.environ.get("PYTHONPATH")
    rounds: list[dict[str, Any]] = []
    for n in range(args.rounds):
        for name, tree in trees.items():
            # What the agents, workers, services and CLI calls run (the harness stays this one).
            os.environ["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), str(here)])
            try:
                with tempfile.TemporaryDirectory(prefix="ll-bootstrap-") as tmp:
                    logs = args.logs / f"round-{n + 1}-{name}" if args.logs else None
                    got = {"tree": name} | one_round(Path(tmp), logs)
            finally:
                if before is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = before
            print(f"round {n + 1} ({name}): {json.dumps(got)}", flush=True)
            rounds.append(got)
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"], capture_output=True, text=True
    ).stdout
    medians = {
        name: {k: statistics.median(r[k] for r in rounds if r["tree"] == name) for k in FIGURES}
        for name in trees
    }
    result = {
        "topology": "1 train + 3 inference agents, 1 registered machine not answering; 1 late join",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "rabbitmq": version},
        "trees": {name: _commit(tree) for name, tree in trees.items()},
        "rounds": rounds,
        "median": medians["this"],
        "median_by_tree": medians,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(medians, indent=2))


def _commit(tree: Path) -> str:
    """What a tree ran, by its commit (a result names no folder of the machine it ran on)."""
    got = subprocess.run(
        ["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return got.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
