"""How long a triggered training waits behind bulk work in the embedded server, before and after.

Two ``labelloop serve`` processes run at the same time on this machine: one from another source
tree (``--before``, e.g. a checkout of main) and one from this tree. Each gets the same text task
(TREC-6 questions, sentence embeddings when the extra is installed) with ``--items`` items, so its
workers are busy featurizing (and, after each new model, re-predicting the pool), and the same
labels, ``--step`` at a time: each step's labels trigger a training. The wait of a training is its
job's ``started_at - created_at``.

    python -m bench.training_wait --before /tmp/main-checkout/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.datasets import trec
from bench.queue_predict import Processes
from labelloop.client import Client
from labelloop.demo import free_port


def run(url: str, texts: list[str], truth: list[str], labels: list[str], args: Any) -> list[float]:
    """Seconds each triggered training waited for a worker."""
    with Client(url, timeout=300) as c:
        task = c.create_task("trec", "text-classification", labels)["id"]
        items = c.add_items(task, [{"data": t} for t in texts])["items"]
        waits: list[float] = []
        seen: set[int] = set()
        for step in range(args.steps):
            chunk = range(step * args.step, (step + 1) * args.step)
            c.annotate(task, [{"item_id": items[i]["id"], "labels": [truth[i]]} for i in chunk])
            c.wait_for_training(task, timeout=1800, poll=0.2)
            for j in c.jobs(task, limit=500):
                if j["kind"] == "train" and j["id"] not in seen and j["started_at"]:
                    seen.add(j["id"])
                    start = datetime.fromisoformat(j["started_at"])
                    waits.append((start - datetime.fromisoformat(j["created_at"])).total_seconds())
        return waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other tree's src/")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--step", type=int, default=12, help="labels per triggered training")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--trec", type=Path, help="TREC's train_5500.label (default: shared)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/training_wait.json"))
    args = parser.parse_args()
    data = trec(args.trec)
    texts, truth = data.data[: args.items], data.truth[: args.items]
    here = str(Path(__file__).resolve().parents[1] / "src")
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-tw-") as tmp:
        work = Path(tmp)
        procs = Processes(work / "logs")
        urls = {}
        try:
            for name, src in (("before", str(args.before.resolve())), ("after", here)):
                port = free_port()
                env = {**os.environ, "PYTHONPATH": src, "LABELLOOP_DATA_DIR": str(work / name)}
                env.pop("LABELLOOP_JOBS", None)
                env["LABELLOOP_LOCAL_START_TIMEOUT_S"] = "900"  # a crowded machine
                procs.start(name, ["serve", "--port", str(port)], env)
                urls[name] = f"http://127.0.0.1:{port}"
            for url in urls.values():
                with Client(url, timeout=60) as c:
                    c.wait_until_up(900)
            waits: dict[str, list[float]] = {}

            def one(name: str) -> None:
                waits[name] = run(urls[name], texts, truth, data.labels, args)

            threads = [threading.Thread(target=one, args=(n,)) for n in urls]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            procs.stop()
    result: dict[str, Any] = {
        "command": "python -m bench.training_wait " + " ".join(sys.argv[1:]),
        "items": args.items,
        "waits_s": waits,
    }
    for name, w in waits.items():
        ordered = sorted(w)
        result[name] = {
            "median_s": statistics.median(w) if w else None,
            "max_s": ordered[-1] if w else None,
            "trainings": len(w),
        }
        print(f"{name}: {result[name]}  waits {[round(x, 2) for x in w]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
