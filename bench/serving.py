"""Serving figures of the embedded default: predict throughput and latency, and memory.

    python -m bench.serving throughput     # POST /predict, batches of 64 and single items
    python -m bench.serving memory         # RSS of `labelloop serve` with 20 idle tasks

Both start a real `labelloop serve` in a child process and talk to it over HTTP.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from labelloop.client import Client
from labelloop.demo import free_port, running_server, write_digits


def trained_digits_task(client: Client, images: list[tuple[Path, str]], n_labels: int) -> int:
    task = client.create_task("digits", "image-classification", [str(d) for d in range(10)])
    added = client.add_items(task["id"], [{"data": str(p)} for p, _ in images])
    pairs = list(zip(added["items"], images, strict=True))[:n_labels]
    client.annotate(
        task["id"], [{"item_id": it["id"], "labels": [label]} for it, (_, label) in pairs]
    )
    client.train(task["id"])
    client.wait_for_training(task["id"])
    return int(task["id"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def throughput(work: Path, batches: int, singles: int) -> dict[str, object]:
    images = write_digits(work / "digits")
    with (
        running_server(work / "data", free_port(), ["--import-root", str(work)]) as server,
        Client(server.url) as client,
    ):
        t = trained_digits_task(client, images, 500)
        links = [str(p) for p, _ in images]
        client.predict(t, links[:64])  # warm the model cache
        batch_times = []
        for b in range(batches):
            chunk = links[(b * 64) % 1700 : (b * 64) % 1700 + 64]
            t0 = time.perf_counter()
            out = client.predict(t, chunk)
            batch_times.append(time.perf_counter() - t0)
            assert len(out["predictions"]) == 64
        single = []
        for i in range(singles):
            t0 = time.perf_counter()
            client.predict(t, [links[i % len(links)]])
            single.append(time.perf_counter() - t0)
    return {
        "batch_size": 64,
        "batches": batches,
        "items_per_second_median": 64 / statistics.median(batch_times),
        "batch_latency_ms_median": 1000 * statistics.median(batch_times),
        "single_item_requests": singles,
        "single_p50_ms": 1000 * percentile(single, 0.50),
        "single_p99_ms": 1000 * percentile(single, 0.99),
    }


def memory(work: Path, tasks: int) -> dict[str, object]:
    images = write_digits(work / "digits")[:300]
    with (
        running_server(work / "data", free_port(), ["--import-root", str(work)]) as server,
        Client(server.url) as client,
    ):
        proc = psutil.Process(server.pid)
        baseline = proc.memory_info().rss
        ids = [trained_digits_task(client, images, 200) for _ in range(tasks)]
        time.sleep(1)
        on_disk = proc.memory_info().rss
        for t in ids:  # every task answers once: its served model is now loaded in the API
            client.predict(t, [str(images[0][0])])
        loaded = proc.memory_info().rss
        workers = sum(c.memory_info().rss for c in proc.children(recursive=True))
    mib = 1024 * 1024
    return {
        "tasks": tasks,
        "api_rss_mib_at_start": round(baseline / mib, 1),
        "api_rss_mib_tasks_trained": round(on_disk / mib, 1),
        "api_rss_mib_all_models_loaded": round(loaded / mib, 1),
        "per_loaded_model_mib": round((loaded - on_disk) / tasks / mib, 2),
        "worker_processes_rss_mib": round(workers / mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["throughput", "memory"])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-") as tmp:
        if args.what == "throughput":
            result = throughput(Path(tmp), args.batches, args.singles)
        else:
            result = memory(Path(tmp), args.tasks)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
