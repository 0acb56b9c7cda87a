"""CPU per task of Label Studio ``/predict``: labelloop's configurations, its trees, the peer.

Throughput on a shared, busy machine moves with everyone else's load; the CPU time a server
spends per task (``/proc`` counters of its process tree, workers included) moves much less. Every
labelloop project is fitted on the same 1,000 TREC-6 labels as in :mod:`bench.labelstudio_peer`
(the peer, when measured, prepared by its ``prepare``), then, A B A B, 1,024 new tasks from 4
clients in batches of 64 go to each system, and each server's CPU seconds over them are divided by
the tasks (once the server has settled, so that what labelloop writes after answering is
counted).

``--projects`` names labelloop's configurations (``fast``: ``embeddings: false``; ``default``: the
default one, static token embeddings). ``--src`` serves labelloop from a source tree; given more
than once, each tree gets its own server and the rounds alternate over all of them, so a before
and an after are measured in one run (``--no-peer`` leaves the peer out). ``--profile DIR``
then sends ``--profile-tasks`` more to each labelloop system (questions used again, with new task
ids) while py-spy records its server
(``DIR/<system>.txt``, raw stacks of all its processes) and writes the CPU each thread spent
(``DIR/threads.json``: threads that py-spy does not list as Python threads are native ones, such
as a library's thread pool).

    python -m bench.labelstudio_cpu --peer /tmp/peer --rounds 3
    python -m bench.labelstudio_cpu --no-peer --projects default fast --rounds 4 \
        --src /tmp/before/src --src src --serve-env LABELLOOP_ENCODER_DIR=/tmp/encoders
    python -m bench.labelstudio_cpu --no-peer --projects default fast --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

#: Configuration name -> (Label Studio project, policy).
CONFIGS: dict[str, tuple[str, Any]] = {
    "fast": (PROJECTS["labelloop-fast"], FAST_POLICY),
    "default": (PROJECTS["labelloop"], None),
}


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (those alive now)."""
    total = 0.0
    for p in tree(pid):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def settled(pid: int, timeout: float = 30.0) -> float:
    """CPU seconds once the server is idle (under 5% of a core for half a second): the
    write-behind and any job the requests left have finished."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.025:
            return now
        last = now
    return last


def thread_cpu(pid: int) -> dict[tuple[int, int], float]:
    """CPU seconds of every thread of the server's processes: (pid, tid) -> seconds."""
    out: dict[tuple[int, int], float] = {}
    for p in tree(pid):
        try:
            for t in p.threads():
                out[(p.pid, t.id)] = t.user_time + t.system_time
        except psutil.Error:
            continue
    return out


def python_threads(pid: int) -> dict[int, str]:
    """Native thread id -> the Python thread's name (py-spy dump) of each of the server's
    processes; threads missing here run no Python code."""
    names: dict[int, str] = {}
    for p in tree(pid):
        dump = subprocess.run(
            [_pyspy(), "dump", "--pid", str(p.pid), "--nonblocking"],
            capture_output=True,
            text=True,
        ).stdout
        for m in re.finditer(r'^Thread (\S+) \([^)]*\): "([^"]*)"', dump, re.M):
            tid = m.group(1)
            names[int(tid, 16) if tid.startswith("0x") else int(tid)] = m.group(2)
    return names


def _pyspy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", type=Path, help="the folder `prepare` made")
    parser.add_argument("--no-peer", action="store_true", help="labelloop's systems only")
    parser.add_argument("--projects", nargs="+", choices=list(CONFIGS), default=["fast"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=1024, help="tasks per round and system")
    parser.add_argument(
        "--src", type=Path, action="append", help="labelloop's source tree (repeatable)"
    )
    parser.add_argument(
        "--serve-args", nargs="*", default=[], help="more `labelloop serve` options"
    )
    parser.add_argument(
        "--serve-env", nargs="*", default=[], help="KEY=VALUE for `labelloop serve`"
    )
    parser.add_argument("--profile", type=Path, help="py-spy and per-thread CPU into this folder")
    parser.add_argument(
        "--profile-tasks", type=int, default=16384, help="(questions reused with new task ids)"
    )
    parser.add_argument("--perf", action="store_true", help="with --profile: perf too (by library)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/labelstudio_cpu.json"))
    args = parser.parse_args()
    if not args.no_peer and args.peer is None:
        parser.error("--peer (or --no-peer)")
    data = trec(None)
    cfg = config(data.labels)
    texts, truth = data.data[:1000], data.truth[:1000]
    trees: list[Path | None] = list(args.src) if args.src else [None]
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-cpu-") as tmp:
        work = Path(tmp)
        procs = Processes(work / "logs")
        try:
            servers: list[tuple[str, str, int]] = []  # label, url, pid
            for k, src in enumerate(trees):
                env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
                env["LABELLOOP_DATA_DIR"] = str(work / f"labelloop{k}")
                env["LABELLOOP_LOCAL_START_TIMEOUT_S"] = "900"
                env.update(dict(kv.split("=", 1) for kv in args.serve_env))
                if src is not None:
                    env["PYTHONPATH"] = f"{src.resolve()}:{env.get('PYTHONPATH', '')}"
                port = free_port()
                server = procs.start(
                    f"labelloop{k}", ["serve", "--port", str(port), *args.serve_args], env
                )
                label = "" if len(trees) == 1 else f"{k}:"
                servers.append((label, f"http://127.0.0.1:{port}", server.pid))
            systems: list[System] = []
            if not args.no_peer:
                peer_port = free_port()
                (work / "peer").mkdir()
                fit_peer(args.peer.resolve(), work / "peer", cfg, texts, truth)
                peer_pid = serve_peer(procs, args.peer.resolve(), work / "peer", peer_port)
                wait_http(f"http://127.0.0.1:{peer_port}/health")
                systems.append(
                    System("peer", f"http://127.0.0.1:{peer_port}", f"1.{STAMP}", cfg, peer_pid)
                )
            for label, url, pid in servers:
                wait_http(f"{url}/labelstudio/health", 900)
                for name in args.projects:
                    project, policy = CONFIGS[name]
                    train_labelloop(url, project, cfg, texts, truth, policy)
                    systems.append(System(label + name, f"{url}/labelstudio", project, cfg, pid))
            fresh = list(enumerate(data.data[1000:], start=1_000_000))
            for system in systems:
                throughput(system, fresh[:128], 4, 64)  # warm: every API process has its model
            fresh = fresh[128:]
            need = args.rounds * args.tasks
            if len(fresh) < need:
                raise SystemExit(f"{len(fresh)} fresh questions, {need} needed: fewer --tasks")
            rounds: dict[str, dict[str, list[float]]] = {
                s.name: {"cpu_ms_per_task": [], "tasks_per_s": []} for s in systems
            }
            loads = [load_average()]
            for r in range(args.rounds):
                batch, fresh = fresh[: args.tasks], fresh[args.tasks :]
                for system in systems:
                    before = settled(system.pid)
                    rounds[system.name]["tasks_per_s"].append(throughput(system, batch, 4, 64))
                    spent = settled(system.pid) - before
                    rounds[system.name]["cpu_ms_per_task"].append(1000 * spent / len(batch))
                loads.append(load_average())
                print(f"round {r + 1} (load {loads[-1]}): {json.dumps(rounds)}", flush=True)
            reused = data.data[1000:]
            tasks = [(k, reused[k % len(reused)]) for k in range(args.profile_tasks)]
            profiles = profile(args, systems, tasks) if args.profile else {}
        finally:
            procs.stop()
    summary: dict[str, dict[str, float]] = {}
    for name, got in rounds.items():
        summary[name] = {
            "cpu_ms_per_task": statistics.median(got["cpu_ms_per_task"]),
            "tasks_per_s": statistics.median(got["tasks_per_s"]),
        }
        if "peer" in rounds:
            peer = rounds["peer"]
            summary[name]["cpu_vs_peer"] = statistics.median(
                a / b for a, b in zip(got["cpu_ms_per_task"], peer["cpu_ms_per_task"], strict=True)
            )
            summary[name]["throughput_vs_peer"] = statistics.median(
                a / b for a, b in zip(got["tasks_per_s"], peer["tasks_per_s"], strict=True)
            )
        print(f"{name}: {json.dumps(summary[name])}")
    result = {
        "per_round": rounds,
        "summary": summary,
        "load_average": loads,
        "src": [str(s) for s in trees],
        "serve_env": args.serve_env,
        "serve_args": args.serve_args,
        "profiles": profiles,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def profile(
    args: argparse.Namespace, systems: list[System], tasks: list[tuple[int, str]]
) -> dict[str, Any]:
    """Each labelloop system under the same tasks (new ids for each) while py-spy records its
    server; the CPU each thread spent meanwhile."""
    folder: Path = args.profile
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for k, system in enumerate(s for s in systems if s.name != "peer"):
        ids = [(tid + 1_000_000 * (k + 2), text) for tid, text in tasks]
        names = python_threads(system.pid)
        before_threads, before = thread_cpu(system.pid), settled(system.pid)
        safe = system.name.replace(":", "-")
        spy = subprocess.Popen(
            [_pyspy(), "record", "--pid", str(system.pid), "--subprocesses", "--nonblocking",
             "-r", "200", "-f", "raw", "-o", str(folder / f"{safe}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        perf = None
        if args.perf:
            pids = ",".join(str(p.pid) for p in tree(system.pid))
            perf = subprocess.Popen(
                ["perf", "record", "-F", "499", "-g", "-p", pids, "-o", str(folder / f"{safe}.perf")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        time.sleep(2.0)  # py-spy attaches
        wall = throughput(system, ids, 4, 64)
        spent = settled(system.pid) - before
        for recorder in (spy, perf):
            if recorder is not None:
                recorder.send_signal(signal.SIGINT)
                recorder.wait(60)
        if perf is not None:
            with open(folder / f"{safe}.perf.txt", "w") as fh:
                subprocess.run(
                    ["perf", "report", "-i", str(folder / f"{safe}.perf"), "--no-children",
                     "--sort", "dso", "--stdio", "-g", "none"],
                    stdout=fh, stderr=subprocess.DEVNULL,
                )  # fmt: skip
        after = thread_cpu(system.pid)
        n = len(ids)
        per_thread = sorted(
            ((1000 * (cpu - before_threads.get(key, 0.0)) / n, key) for key, cpu in after.items()),
            reverse=True,
        )
        threads = [
            {"pid": pid, "tid": tid, "python": names.get(tid, "native"), "ms_per_task": ms}
            for ms, (pid, tid) in per_thread
            if ms >= 0.005
        ]
        out[system.name] = {
            "cpu_ms_per_task": 1000 * spent / len(ids),
            "tasks_per_s": wall,
            "threads": threads,
        }
        print(f"profile {system.name}: {json.dumps(out[system.name])}", flush=True)
    (folder / "threads.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
