"""Predictions and model updates through the Celery queue, against the embedded default, in one run.

Both run at the same time on this machine and are measured in alternating rounds (medians over the
rounds), so that their ratio is not skewed by what else the machine does meanwhile:

- the embedded default: ``labelloop serve`` (SQLite, local worker processes, predictions in the API
  process);
- the queue: ``labelloop serve --jobs celery`` on PostgreSQL, with one data, one train and one,
  then two, inference workers as separate processes, on a vhost of the run's own on the machine's
  RabbitMQ.

Measured on scikit-learn's digits (PNG files): predict throughput with batches of 64 links (1 and 4
clients), single-item predict latency (p50, p99, one client), and label-to-new-version latency (the
simulated annotator's stream: from the label that triggers a training to the new version served).

    python -m bench.queue_predict                 # figures for docs/BENCHMARKS.md
    python -m bench.queue_predict --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.client import Client
from labelloop.demo import free_port, write_digits
from labelloop.simulation import run_stream

DIGITS = [str(d) for d in range(10)]


@contextmanager
def vhost() -> Iterator[str]:
    name = f"labelloop-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True)


@contextmanager
def pg_database() -> Iterator[str]:
    import psycopg

    name = f"labelloop_bench_{uuid.uuid4().hex[:8]}"
    dsn = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Processes:
    """Child processes in sessions of their own, stopped (all of them) at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "labelloop", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)


def wait_up(client: Client, timeout: float = 120) -> None:
    client.wait_until_up(timeout)


def wait_workers(client: Client, n_inference: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = client._request("GET", "/api/v1/cluster/workers")
        roles = [r for w in status["workers"] for r in w["roles"]]
        if roles.count("inference") >= n_inference and {"data", "train"} <= set(roles):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not come up: {status}")
        time.sleep(0.5)


def prepare(
    client: Client, links: list[tuple[str, str]], n_labels: int, seed: int
) -> dict[str, Any]:
    """A digits task with every item, labelled along a seeded stream: label-to-version latency."""
    task = client.create_task("digits", "image-classification", DIGITS)
    items = client.add_items(task["id"], [{"data": p} for p, _ in links])["items"]
    while client.get_task(task["id"])["counts"]["pending"]:
        time.sleep(0.2)
    ids = [it["id"] for it in items]
    order = np.random.RandomState(seed).permutation(len(ids))[:n_labels]
    result = run_stream(client, task["id"], [(ids[i], [links[i][1]]) for i in order])
    labelled = set(order.tolist())
    unlabelled = [links[i][0] for i in range(len(links)) if i not in labelled]
    return {
        "task_id": task["id"],
        "unlabelled": unlabelled,
        "update_latencies_s": result.update_latencies,
        "first_model_s": result.first_model_seconds,
        "versions_promoted": result.versions_promoted,
        "served_version": client.get_task(task["id"])["served_version"],
    }


def latency(client: Client, task_id: int, links: list[str], n: int) -> list[float]:
    out = []
    for k in range(n):
        started = time.perf_counter()
        got = client.predict(task_id, [links[k % len(links)]])
        out.append(time.perf_counter() - started)
        assert got["predictions"][0]["status"] == "ok"
    return out


def throughput(url: str, task_id: int, links: list[str], batches: int, clients: int) -> float:
    """Items per second with ``clients`` threads each sending batches of 64 links."""
    per_client = max(1, batches // clients)
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        with Client(url, timeout=120) as c:
            barrier.wait()
            try:
                for b in range(per_client):
                    start = ((k * per_client + b) * 64) % (len(links) - 64)
                    got = c.predict(task_id, links[start : start + 64])
                    assert all(p["status"] == "ok" for p in got["predictions"])
            except BaseException as exc:  # reported after the run
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return clients * per_client * 64 / elapsed


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by these processes and their children."""
    import psutil  # type: ignore[import-untyped]

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def rounds(
    systems: dict[str, tuple[str, dict[str, Any]]],
    processes: dict[str, dict[str, list[int]]],
    n_rounds: int,
    batches: int,
    n_latency: int,
) -> dict[str, dict[str, Any]]:
    """Alternate the systems round by round; medians over the rounds.

    ``processes`` names each system's processes by part (API, inference workers): the CPU time
    they use per predicted item during the throughput runs is what capacity scales with.
    """
    raw: dict[str, dict[str, list[float]]] = {
        name: {"tp1": [], "tp4": [], "lat": []} for name in systems
    }
    cpu: dict[str, dict[str, float]] = {name: {} for name in systems}
    items = dict.fromkeys(systems, 0)
    for _ in range(n_rounds):
        for name, (url, prep) in systems.items():
            task_id, links = prep["task_id"], prep["unlabelled"]
            with Client(url, timeout=120) as c:
                raw[name]["lat"] += latency(c, task_id, links, n_latency)
            before = {part: cpu_seconds(pids) for part, pids in processes[name].items()}
            raw[name]["tp1"].append(throughput(url, task_id, links, batches, 1))
            raw[name]["tp4"].append(throughput(url, task_id, links, batches, 4))
            for part, pids in processes[name].items():
                cpu[name][part] = cpu[name].get(part, 0.0) + cpu_seconds(pids) - before[part]
            items[name] += (batches + 4 * max(1, batches // 4)) * 64
    out = {}
    for name, r in raw.items():
        out[name] = {
            "throughput_items_s_1_client": statistics.median(r["tp1"]),
            "throughput_items_s_4_clients": statistics.median(r["tp4"]),
            "latency_p50_ms": 1000 * statistics.median(r["lat"]),
            "latency_p99_ms": 1000 * pct(r["lat"], 0.99),
            "latency_n": len(r["lat"]),
            "cpu_ms_per_item": {part: 1000 * t / items[name] for part, t in cpu[name].items()},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=300, help="labels in the stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=24, help="batches of 64 per measurement")
    parser.add_argument("--latency-n", type=int, default=200, help="single-item requests/round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inference-pool", default="prefork")
    parser.add_argument("--quick", action="store_true", help="a smoke run (small numbers)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/queue_predict.json"))
    args = parser.parse_args()
    if args.quick:
        args.labels, args.rounds, args.batches, args.latency_n = 60, 1, 8, 40

    with tempfile.TemporaryDirectory(prefix="labelloop-bench-queue-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        links = [(str(p), y) for p, y in write_digits(work / "images")]
        procs = Processes(work / "logs")
        stack.callback(procs.stop)
        base_env = {**os.environ, "LABELLOOP_IMPORT_ROOTS": str(work / "images")}
        base_env.pop("LABELLOOP_JOBS", None)

        # The embedded default.
        emb_port = free_port()
        emb_env = {**base_env, "LABELLOOP_DATA_DIR": str(work / "embedded")}
        emb_env.pop("LABELLOOP_DATABASE_URL", None)
        emb_proc = procs.start("embedded", ["serve", "--port", str(emb_port)], emb_env)
        emb_url = f"http://127.0.0.1:{emb_port}"

        # The queue.
        broker = stack.enter_context(vhost())
        database = stack.enter_context(pg_database())
        q_env = {
            **base_env,
            "LABELLOOP_DATA_DIR": str(work / "queue"),
            "LABELLOOP_BROKER_URL": broker,
            "LABELLOOP_DATABASE_URL": database,
        }
        q_port = free_port()
        q_proc = procs.start(
            "queue-api", ["serve", "--port", str(q_port), "--jobs", "celery"], q_env
        )
        q_url = f"http://127.0.0.1:{q_port}"
        procs.start("data", ["worker", "--role", "data"], q_env)
        procs.start("train", ["worker", "--role", "train"], q_env)
        pool = ["--pool", args.inference_pool]
        inf1 = procs.start("inference-1", ["worker", "--role", "inference", *pool], q_env)

        with Client(emb_url, timeout=600) as emb, Client(q_url, timeout=600) as q:
            wait_up(emb)
            wait_up(q)
            wait_workers(q, 1)
            print("labelling streams (label-to-new-version latency) ...", flush=True)
            prep_emb = prepare(emb, links, args.labels, args.seed)
            prep_q = prepare(q, links, args.labels, args.seed)
            print("predictions, one inference worker ...", flush=True)
            systems = {"embedded": (emb_url, prep_emb), "queue": (q_url, prep_q)}
            parts = {
                "embedded": {"api": [emb_proc.pid]},
                "queue": {"api": [q_proc.pid], "inference": [inf1.pid]},
            }
            one = rounds(
                systems,
                parts,
                args.rounds,
                args.batches,
                args.latency_n,
            )
            inf2 = procs.start("inference-2", ["worker", "--role", "inference", *pool], q_env)
            wait_workers(q, 2)
            print("predictions, two inference workers ...", flush=True)
            parts["queue"]["inference"].append(inf2.pid)
            two = rounds(
                systems,
                parts,
                args.rounds,
                args.batches,
                args.latency_n,
            )

    def upd(prep: dict[str, Any]) -> float | None:
        lat = prep["update_latencies_s"]
        return statistics.median(lat) if lat else None

    result = {
        "command": "python -m bench.queue_predict " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "labels": args.labels,
        "rounds": args.rounds,
        "inference_pool": args.inference_pool,
        "one_inference_worker": one,
        "two_inference_workers": two,
        "label_to_new_version_s": {
            "embedded_median": upd(prep_emb),
            "queue_median": upd(prep_q),
            "embedded_first_model": prep_emb["first_model_s"],
            "queue_first_model": prep_q["first_model_s"],
            "promotions": [prep_emb["versions_promoted"], prep_q["versions_promoted"]],
        },
    }
    for label, block in (("1 inference worker", one), ("2 inference workers", two)):
        e, qq = block["embedded"], block["queue"]
        print(f"\n{label}")
        for key in (
            "throughput_items_s_1_client",
            "throughput_items_s_4_clients",
            "latency_p50_ms",
            "latency_p99_ms",
        ):
            print(
                f"  {key:32s} embedded {e[key]:9.1f}  queue {qq[key]:9.1f}  ratio {qq[key] / e[key]:.2f}"
            )
        print(f"  CPU ms per item: embedded {e['cpu_ms_per_item']}, queue {qq['cpu_ms_per_item']}")
    lt = result["label_to_new_version_s"]
    print(
        f"\nlabel-to-new-version (median s): embedded {lt['embedded_median']}, queue {lt['queue_median']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
