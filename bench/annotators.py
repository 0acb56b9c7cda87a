"""Concurrent annotators on one task: how many labels each item gets, with and without reservations.

    python -m bench.annotators                       # 30 annotators, 90 items
    python -m bench.annotators --annotators 30 --items 90 --out bench/results/annotators.json

Against a real ``labelloop serve`` (embedded default, SQLite). Each annotator loops until ``/next``
has nothing left: ask for 3 items, label all of them. Two runs on fresh tasks: ``anonymous`` asks
``/next`` without a name (nothing is reserved: what every client did before reservations) and
``reserved`` with the annotator's name. Reported per run: labels given, items labelled, items with
more than one label, the most labels on one item, the wall time, and ``/next``'s p50/p99 latency
under 30 callers at once. Then one caller alone (``sequential``): ``/next`` of 12 items without
and with a name on a task of 5,000 items, alternately, medians and their ratio: what reserving
costs a request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from labelloop.client import Client
from labelloop.demo import free_port, running_server

BATCH = 3


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(url: str, n_items: int, n_people: int, reserve: bool) -> dict[str, Any]:
    with Client(url) as ll:
        task = ll.create_task(
            f"annotators {'reserved' if reserve else 'anonymous'}",
            "text-classification",
            ["a", "b"],
            policy={"min_labels": 10**6},  # no training: the bench measures handing out
        )
        ll.add_items(task["id"], [{"data": f"text number {i}"} for i in range(n_items)])
    labels: Counter[int] = Counter()
    latency: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(n_people)

    def annotator(name: str) -> None:
        with Client(url, timeout=300) as ll:
            start.wait()
            while True:
                t0 = time.perf_counter()
                items = ll.next_items(task["id"], BATCH, name if reserve else None)["items"]
                with lock:
                    latency.append(time.perf_counter() - t0)
                if not items:
                    return
                ll.annotate(
                    task["id"],
                    [{"item_id": it["id"], "labels": ["a"], "annotator": name} for it in items],
                )
                with lock:
                    labels.update(it["id"] for it in items)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=annotator, args=(f"p{n}",)) for n in range(n_people)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {
        "mode": "reserved" if reserve else "anonymous",
        "annotators": n_people,
        "items": n_items,
        "labels": sum(labels.values()),
        "items_labelled": len(labels),
        "items_labelled_twice_or_more": sum(1 for n in labels.values() if n > 1),
        "most_labels_on_one_item": max(labels.values(), default=0),
        "wall_s": round(time.perf_counter() - t0, 2),
        "next_p50_ms": round(1000 * percentile(latency, 0.5), 1),
        "next_p99_ms": round(1000 * percentile(latency, 0.99), 1),
    }


def sequential(url: str, n_items: int, rounds: int) -> dict[str, Any]:
    """One caller, nobody else: ``/next`` (12 items) without a name and with one, alternately, on
    the same task; the reserved items are given back after each call, so both see the same pool.
    The medians and their ratio are the cost of reserving."""
    with Client(url) as ll:
        task = ll.create_task(
            "one caller", "text-classification", ["a", "b"], policy={"min_labels": 10**6}
        )
        for start in range(0, n_items, 1000):
            ll.add_items(
                task["id"],
                [{"data": f"text {i}"} for i in range(start, min(n_items, start + 1000))],
            )
        times: dict[str, list[float]] = {"anonymous": [], "reserved": []}
        for _ in range(rounds):
            for mode, name in (("anonymous", None), ("reserved", "solo")):
                t0 = time.perf_counter()
                ll.next_items(task["id"], 12, name)
                times[mode].append(time.perf_counter() - t0)
            ll.release_reservations(task["id"], "solo")
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "mode": "sequential",
        "items": n_items,
        "rounds": rounds,
        "next_median_ms": {m: round(1000 * v, 1) for m, v in med.items()},
        "reserved_over_anonymous": round(med["reserved"] / med["anonymous"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=30)
    parser.add_argument("--items", type=int, default=90)
    parser.add_argument("--pool", type=int, default=5000, help="items of the sequential task")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp), free_port()) as server:
        results = [run(server.url, args.items, args.annotators, r) for r in (False, True)]
        results.append(sequential(server.url, args.pool, args.rounds))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
