"""CPU per task of Label Studio ``/predict``: labelloop's fast configuration against the peer.

Throughput on a shared, busy machine moves with everyone else's load; the CPU time a server
spends per task (``/proc`` counters of its process tree, workers included) moves much less. Both
servers are fitted on the same 1,000 TREC-6 labels as in :mod:`bench.labelstudio_peer` (the peer
prepared by its ``prepare``), then, A B A B, 1,024 new tasks from 4 clients in batches of 64 go
to each, and each server's CPU seconds over them are divided by the tasks (1 s after the last
answer, so that what labelloop writes after answering is counted). ``--src`` serves labelloop
from another source tree (a "before" in the same run, as a second invocation at the same time).

    python -m bench.labelstudio_cpu --peer /tmp/peer --rounds 3
    python -m bench.labelstudio_cpu --peer /tmp/peer --rounds 3 --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from bench.cluster_predict import config
from bench.datasets import trec
from bench.labelstudio_peer import (
    FAST_POLICY,
    PROJECTS,
    STAMP,
    System,
    fit_peer,
    load_average,
    serve_peer,
    throughput,
    train_labelloop,
    wait_http,
)
from bench.queue_predict import Processes
from labelloop.demo import free_port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (those alive now)."""
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", type=Path, required=True, help="the folder `prepare` made")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=1024, help="tasks per round and system")
    parser.add_argument("--src", type=Path, help="labelloop's source tree to serve")
    parser.add_argument(
        "--serve-args", nargs="*", default=[], help="more `labelloop serve` options"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/labelstudio_cpu.json"))
    args = parser.parse_args()
    data = trec(None)
    cfg = config(data.labels)
    texts, truth = data.data[:1000], data.truth[:1000]
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-cpu-") as tmp:
        work = Path(tmp)
        procs = Processes(work / "logs")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
        env["LABELLOOP_DATA_DIR"] = str(work / "labelloop")
        env["LABELLOOP_LOCAL_START_TIMEOUT_S"] = "900"
        if args.src is not None:
            env["PYTHONPATH"] = f"{args.src.resolve()}:{env.get('PYTHONPATH', '')}"
        port, peer_port = free_port(), free_port()
        url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        try:
            ll_pid = procs.start(
                "labelloop", ["serve", "--port", str(port), *args.serve_args], env
            ).pid
            (work / "peer").mkdir()
            fit_peer(args.peer.resolve(), work / "peer", cfg, texts, truth)
            serve_peer(procs, args.peer.resolve(), work / "peer", peer_port)
            peer_pid = procs.procs[-1].pid
            wait_http(f"{peer_url}/health")
            wait_http(f"{url}/labelstudio/health", 900)
            project = PROJECTS["labelloop-fast"]
            train_labelloop(url, project, cfg, texts, truth, FAST_POLICY)
            systems = {
                "peer": (System("peer", peer_url, f"1.{STAMP}", cfg, peer_pid), peer_pid),
                "labelloop-fast": (
                    System("fast", f"{url}/labelstudio", project, cfg, ll_pid),
                    ll_pid,
                ),
            }
            fresh = list(enumerate(data.data[1000:], start=1_000_000))
            for system, _ in systems.values():
                throughput(system, fresh[:128], 4, 64)  # warm
            fresh = fresh[128:]
            rounds = {n: {"cpu_ms_per_task": [], "tasks_per_s": []} for n in systems}
            loads = [load_average()]
            for r in range(args.rounds):
                batch, fresh = fresh[: args.tasks], fresh[args.tasks :]
                for name, (system, pid) in systems.items():
                    before = cpu_seconds(pid)
                    rounds[name]["tasks_per_s"].append(throughput(system, batch, 4, 64))
                    time.sleep(1.0)  # labelloop's write-behind finishes
                    spent = cpu_seconds(pid) - before
                    rounds[name]["cpu_ms_per_task"].append(1000 * spent / len(batch))
                loads.append(load_average())
                print(f"round {r + 1} (load {loads[-1]}): {json.dumps(rounds)}", flush=True)
        finally:
            procs.stop()
    peer = rounds["peer"]
    summary = {}
    for name, got in rounds.items():
        summary[name] = {
            "cpu_ms_per_task": statistics.median(got["cpu_ms_per_task"]),
            "cpu_vs_peer": statistics.median(
                a / b for a, b in zip(got["cpu_ms_per_task"], peer["cpu_ms_per_task"], strict=True)
            ),
            "throughput_vs_peer": statistics.median(
                a / b for a, b in zip(got["tasks_per_s"], peer["tasks_per_s"], strict=True)
            ),
        }
        print(f"{name}: {json.dumps(summary[name])}")
    result = {"per_round": rounds, "summary": summary, "load_average": loads, "src": str(args.src)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
