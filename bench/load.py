"""Load: simulated annotators against a real `labelloop serve` (embedded default), for minutes.

    python -m bench.load                                   # 30 annotators, 10 minutes, 6 tasks
    python -m bench.load --annotators 30 --minutes 10 --out bench/results/load.json
    python -m bench.load --tasks 1 --items 7188 --minutes 3 --named  # issue 15: 7,188 images
    python -m bench.load --tasks 1 --items 7188 --minutes 1 --named --profile bench/results/p.json
    python -m bench.load --tasks 1 --items 7188 --minutes 1 --named --serve-args "--processes 2"
    # A and B side by side: two trees, started together, their annotators starting together
    PYTHONPATH=a/src python -m bench.load ... --barrier /tmp/ab --parties 2 &
    PYTHONPATH=b/src python -m bench.load ... --barrier /tmp/ab --parties 2

``--profile`` records the server and its worker processes with py-spy (speedscope JSON, idle time
included, 20 s at 50 Hz from the second fifth of the run) and adds a summary to the result: the
share of request-thread samples waiting in SQLite's ``BEGIN IMMEDIATE``, per route.

Each annotator loops on one task: ``GET /next`` (one item), ``GET`` the item's prediction,
``POST`` the true label with the version it was shown. Labels keep models training and promoting
the whole time (each task has all 1,797 digits). The result has p50/p99 latency and errors per
route, the loops (next, prediction, annotate) per second, and the resident memory of the server and of its worker processes over time: at the start,
after the warm-up (the first fifth of the run) and at the end. docs/RELIABILITY.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from labelloop.client import ApiError, Client, ClientError
from labelloop.demo import Server, free_port, running_server, write_digits

DIGITS = [str(d) for d in range(10)]
MIB = 1024 * 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Recorder:
    """Latencies and errors per route, shared by the annotator threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        #: (start, route, seconds) of every answered call: when the slow ones happened.
        self.calls: list[tuple[float, str, float]] = []
        self.errors: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def call(self, route: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
        except ApiError as exc:
            with self.lock:
                self.errors[route][str(exc.status)] += 1
            return None
        except ClientError as exc:
            with self.lock:
                self.errors[route][type(exc).__name__] += 1
            return None
        took = time.perf_counter() - t0
        with self.lock:
            self.latency[route].append(took)
            self.calls.append((t0, route, took))
        return out

    def slow(self, since: float, over_s: float = 1.0) -> dict[str, Any]:
        """Calls slower than ``over_s`` per 5 s window of the run (seconds from ``since``): do
        the slow ones come together (a long write elsewhere) or spread out (queueing)?"""
        windows: dict[int, int] = defaultdict(int)
        for t0, _route, took in self.calls:
            if took > over_s:
                windows[int((t0 - since) // 5) * 5] += 1
        return {"over_s": over_s, "per_5s_window": dict(sorted(windows.items()))}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for route in sorted(set(self.latency) | set(self.errors)):
            values = self.latency.get(route, [])
            out[route] = {
                "requests": len(values) + sum(self.errors[route].values()),
                "p50_ms": round(1000 * percentile(values, 0.5), 1) if values else None,
                "p99_ms": round(1000 * percentile(values, 0.99), 1) if values else None,
                "errors": dict(self.errors[route]),
            }
        return out


def annotator(
    url: str,
    task_id: int,
    truth: dict[int, str],
    rec: Recorder,
    stop: threading.Event,
    name: str | None = None,
) -> None:
    """One person's loop; with ``name``, ``/next`` reserves what it hands out (each person gets
    items of their own, as the web UI and named clients do), else every caller may get the same."""
    with Client(url, timeout=60) as client:
        while not stop.is_set():
            batch = rec.call("GET /next", client.next_items, task_id, limit=1, annotator=name)
            if not batch or not batch["items"]:
                stop.wait(1.0)  # the task is fully labelled (or the call failed): ask again
                continue
            item = batch["items"][0]
            shown = rec.call("GET /prediction", client.prediction, task_id, item["id"])
            version = shown["model_version"] if shown else None
            label: dict[str, Any] = {"item_id": item["id"], "labels": [truth[item["id"]]]}
            if name is not None:
                label["annotator"] = name
            if version is not None:
                label["shown_version"] = version
            rec.call("POST /annotations", client.annotate, task_id, [label])


def rss(pid: int) -> dict[str, float]:
    proc = psutil.Process(pid)
    workers = [c for c in proc.children() if "resource_tracker" not in " ".join(c.cmdline())]
    main = proc.memory_info().rss / MIB
    per_worker = [round(c.memory_info().rss / MIB, 1) for c in workers]
    return {
        "server_mib": round(main, 1),
        "workers_mib": per_worker,
        "total_mib": round(main + sum(per_worker), 1),
    }


def start_profile(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes]:
    """py-spy on the server and its workers (the venv's, next to this interpreter)."""
    spy = Path(sys.executable).parent / "py-spy"
    exe = str(spy) if spy.exists() else (shutil.which("py-spy") or "py-spy")
    cmd = [exe, "record", "-r", "50", "-d", str(seconds), "--idle", "--subprocesses", "-p"]
    cmd += [str(pid), "-f", "speedscope", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: Frames that say which route a request thread serves.
ROUTES = {
    "labelling.py:submit": "POST /annotations",
    "predictions.py:next_items": "GET /next",
    "predictions.py:get_prediction": "GET /prediction",
}


def profile_summary(path: Path) -> dict[str, Any]:
    """Per route: request-thread samples, and the share of them waiting for SQLite's write lock
    (a ``BEGIN IMMEDIATE`` on the stack) or in any SQLite call."""
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    names = [f"{Path(f.get('file', '')).name}:{f['name']}" for f in frames]
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for prof in doc["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            where = [names[i] for i in stack]
            route = next((ROUTES[n] for n in where if n in ROUTES), None)
            if route is None:
                continue
            c = counts[route]
            c["samples"] += weight
            if any("_on_begin" in n for n in where):
                c["write_lock"] += weight
            elif any(n.endswith(":execute") or "do_execute" in n for n in where):
                c["sql"] += weight
    total = sum(c["samples"] for c in counts.values()) or 1
    return {
        "request_samples": total,
        "write_lock_share": round(sum(c["write_lock"] for c in counts.values()) / total, 3),
        "routes": {
            r: {
                "samples": c["samples"],
                "write_lock_share_of_all": round(c["write_lock"] / total, 3),
                "other_sql_share_of_all": round(c["sql"] / total, 3),
            }
            for r, c in sorted(counts.items())
        },
    }


@contextmanager
def patient_server(
    work: Path, attempts: int = 3, serve_args: tuple[str, ...] = ()
) -> Iterator[Server]:
    """``labelloop serve`` for the bench, started again when it did not answer in time (on a
    crowded machine its worker processes may take longer than the demo's 300 s to import)."""
    for attempt in range(1, attempts + 1):
        starting = running_server(
            work / "data",
            free_port(),
            ["--import-root", str(work), *serve_args],
            log=work / "serve.log",
        )
        try:
            server = starting.__enter__()
        except (ClientError, RuntimeError):
            if attempt == attempts:
                raise
            continue
        try:
            yield server
        finally:
            starting.__exit__(None, None, None)
        return


def wait_for_parties(folder: Path, parties: int, patience_s: float = 1800) -> None:
    """Benches run side by side (A and B at the same time) start their annotators together: each
    leaves a file in ``folder`` when its task is ready and waits for ``parties`` of them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + patience_s
    while len(list(folder.glob("ready-*"))) < parties and time.monotonic() < deadline:
        time.sleep(0.2)


def run(
    work: Path,
    annotators: int,
    minutes: float,
    tasks: int,
    items: int,
    named: bool,
    profile: Path | None = None,
    barrier: tuple[Path, int] | None = None,
    serve_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    digits = write_digits(work / "digits")
    # Each task holds ``items`` images: the digits, again and again when more are asked for.
    images = [digits[k % len(digits)] for k in range(items)]
    with patient_server(work, serve_args=serve_args) as server:
        with Client(server.url, timeout=120) as client:
            truths: list[tuple[int, dict[int, str]]] = []
            for n in range(tasks):
                task = client.create_task(f"digits-{n}", "image-classification", DIGITS)
                truth = {}
                for start in range(0, len(images), 1000):  # the API takes 1,000 per request
                    part = images[start : start + 1000]
                    added = client.add_items(task["id"], [{"data": str(p)} for p, _ in part])
                    truth.update(
                        {it["id"]: y for it, (_, y) in zip(added["items"], part, strict=True)}
                    )
                truths.append((task["id"], truth))
            for task_id, _ in truths:
                while client.get_task(task_id)["counts"]["pending"]:
                    time.sleep(1)
        if barrier is not None:
            wait_for_parties(*barrier)
        rec = Recorder()
        stop = threading.Event()
        series: list[dict[str, Any]] = []
        started = time.monotonic()
        started_pc = time.perf_counter()
        series.append({"t_s": 0.0, **rss(server.pid)})
        threads = [
            threading.Thread(
                target=annotator,
                args=(server.url, *truths[k % tasks], rec, stop, f"a{k}" if named else None),
                daemon=True,
            )
            for k in range(annotators)
        ]
        for t in threads:
            t.start()
        end = started + 60 * minutes
        spy: subprocess.Popen[bytes] | None = None
        spy_at = started + 60 * minutes / 5
        spy_s = max(1, min(20, int(60 * minutes * 3 / 5)))
        while time.monotonic() < end:
            if profile is not None and spy is None and time.monotonic() >= spy_at:
                spy = start_profile(server.pid, profile, spy_s)
            wake = spy_at if profile is not None and spy is None else end
            time.sleep(min(10.0, max(0.0, min(wake, end) - time.monotonic())))
            series.append({"t_s": round(time.monotonic() - started, 1), **rss(server.pid)})
        if spy is not None:
            spy.wait(timeout=120)
        stop.set()
        elapsed = time.monotonic() - started
        for t in threads:
            t.join(timeout=120)
        with Client(server.url, timeout=120) as client:
            per_task = [client.get_task(t) for t, _ in truths]
            versions = sum(len(client.models(t)) for t, _ in truths)
    warm = min(series, key=lambda s: abs(s["t_s"] - 60 * minutes / 5))
    last = series[-1]
    return {
        "annotators": annotators,
        "minutes": minutes,
        "tasks": tasks,
        "items_per_task": len(images),
        "named": named,
        "serve_args": list(serve_args),
        "routes": rec.summary(),
        "slow_calls": rec.slow(started_pc),
        "load_average_end": [round(v, 1) for v in os.getloadavg()],
        "loops_per_s": round(len(rec.latency.get("POST /annotations", [])) / elapsed, 2),
        "labels_given": sum(t["counts"]["human_labelled"] for t in per_task),
        "model_versions_trained": versions,
        "rss_start": series[0],
        "rss_after_warmup": warm,
        "rss_end": last,
        "growth_after_warmup": {
            "server": round(last["server_mib"] / warm["server_mib"] - 1, 3),
            "total": round(last["total_mib"] / warm["total_mib"] - 1, 3),
        },
        "worker_rss_median_end_mib": statistics.median(last["workers_mib"] or [0.0]),
        "rss_series": series,
        **(
            {"profile": profile_summary(profile)}
            if profile is not None and profile.exists()
            else {}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--annotators", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--items", type=int, default=1797, help="images per task")
    parser.add_argument("--named", action="store_true", help="annotators ask /next by name")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy speedscope JSON of the server"
    )
    parser.add_argument(
        "--barrier",
        type=Path,
        default=None,
        help="a folder shared with benches started beside this one: start the annotators together",
    )
    parser.add_argument("--parties", type=int, default=2, help="benches that share --barrier")
    parser.add_argument(
        "--serve-args",
        default="",
        help="more `labelloop serve` options, e.g. '--processes 2' (API processes)",
    )
    args = parser.parse_args()
    barrier = None if args.barrier is None else (args.barrier, args.parties)
    profile = args.profile.resolve() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="labelloop-load-", ignore_cleanup_errors=True) as tmp:
        result = run(
            Path(tmp),
            args.annotators,
            args.minutes,
            args.tasks,
            args.items,
            args.named,
            profile,
            barrier,
            tuple(args.serve_args.split()),
        )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
