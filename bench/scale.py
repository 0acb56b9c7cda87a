"""A large task: what ``/next``, ``/predictions`` and the writes behind them cost as the pool grows.

    python -m bench.scale                                  # 10,000 and 100,000 items
    python -m bench.scale --sizes 10000 100000 1000000 --out bench/results/scale.json

Each size runs in its own process (its peak RSS is its own), on a fresh embedded store (SQLite;
``--database-url`` for PostgreSQL), in-process through the service layer (no HTTP, so the figures
are the store's and the code's, not the server's). Per size:

- ``import``: items inserted in batches of 5,000 (synthetic texts; the featurizer is skipped:
  a cheap one is assumed, so this is the store's insert rate, not featurizing);
- ``rescore``: a prediction for every item written in chunks of 5,000 (what a promotion's
  background rescoring writes, ranking included), rows/s;
- then 300 labels as an annotator would: ``/next?limit=10&annotator=…``, then ``/predictions`` of
  each item and one ``POST /annotations`` per item; p50 and p99 of each;
- ``knn``: the density graph of ``size`` 64-dimensional feature rows (``learners/neighbours.py``),
  and the brute-force graph it replaces where that is affordable (≤ 20,000 rows);
- peak RSS of the process, the store's size on disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ["a", "b", "c"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * statistics.median(values), 2),
        "p99_ms": round(1000 * percentile(values, 0.99), 2),
    }


def one(size: int, database_url: str | None, labels: int) -> dict[str, Any]:
    from sqlalchemy import insert, select

    from labelloop.config import Settings
    from labelloop.learners.neighbours import knn_graph
    from labelloop.runtime import Runtime
    from labelloop.schemas import AnnotationCreate, TaskCreate
    from labelloop.service import labelling, predictions, tasks
    from labelloop.store.models import Item, ModelVersion, Task
    from labelloop.store.upsert import upsert_predictions

    root = Path(tempfile.mkdtemp(prefix="labelloop-scale-"))
    rt = Runtime(Settings(data_dir=root, database_url=database_url), migrate_schema=True)
    policy = {"learner": "tfidf-svm", "learner_params": {"embeddings": False}, "min_labels": 10**6}
    t = tasks.create_task(
        rt, TaskCreate(name="scale", category="text-classification", labels=LABELS, policy=policy)
    )["id"]
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"items": size}

    started = time.perf_counter()
    for start in range(0, size, 5000):
        rows = [
            {"task_id": t, "data": f"synthetic text {i} {rng.integers(1 << 30)}", "status": "ready"}
            for i in range(start, min(size, start + 5000))
        ]
        with rt.session() as s:
            s.execute(insert(Item), rows)
    out["import_items_per_s"] = round(size / (time.perf_counter() - started))

    with rt.session() as s:
        ids = list(s.scalars(select(Item.id).where(Item.task_id == t).order_by(Item.id)))
        s.add(
            ModelVersion(
                task_id=t,
                version=0,
                job_key="scale",
                learner="tfidf-svm",
                status="ready",
                label_revision=0,
                metrics={},
            )
        )
        s.get_one(Task, t).served_version = 0
    started = time.perf_counter()
    for start in range(0, size, 5000):
        chunk = ids[start : start + 5000]
        scores = rng.dirichlet(np.ones(len(LABELS)), len(chunk))
        top2 = np.sort(scores, axis=1)[:, -2:]
        rows = [
            {
                "item_id": i,
                "task_id": t,
                "version": 0,
                "labels": [LABELS[int(sc.argmax())]],
                "scores": [round(float(v), 6) for v in sc],
                "score": float(sc.max()),
                "uncertainty": float(1 - (m[1] - m[0])),
            }
            for i, sc, m in zip(chunk, scores, top2, strict=True)
        ]
        with rt.session() as s:
            upsert_predictions(s, rows)
    out["rescore_rows_per_s"] = round(size / (time.perf_counter() - started))

    nxt: list[float] = []
    pre: list[float] = []
    ann: list[float] = []
    given = 0
    while given < labels:
        t0 = time.perf_counter()
        batch = predictions.next_items(rt, t, 10, "annotator")["items"]
        nxt.append(time.perf_counter() - t0)
        for it in batch:
            t0 = time.perf_counter()
            p = predictions.get_prediction(rt, t, it["id"])
            pre.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            labelling.submit(
                rt,
                t,
                [
                    AnnotationCreate(
                        item_id=it["id"],
                        labels=[LABELS[given % 3]],
                        shown_version=p["model_version"],
                    )
                ],
                "annotator",
            )
            ann.append(time.perf_counter() - t0)
            given += 1
    out["next"] = ms(nxt)
    out["predictions"] = ms(pre)
    out["annotate"] = ms(ann)

    X = rng.normal(size=(size, 64)).astype(np.float32)
    X += 4 * rng.normal(size=(100, 64)).astype(np.float32)[rng.integers(0, 100, size)]
    t0 = time.perf_counter()
    knn_graph(X, 5)
    out["knn_graph_s"] = round(time.perf_counter() - t0, 2)
    if size <= 20_000:
        from sklearn.neighbors import NearestNeighbors

        t0 = time.perf_counter()
        NearestNeighbors(n_neighbors=6).fit(X).kneighbors(X, return_distance=False)
        out["knn_brute_s"] = round(time.perf_counter() - t0, 2)

    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    rt.close()
    out["store_mb"] = (
        round(sum(p.stat().st_size for p in root.rglob("labelloop.db*")) / 2**20, 1)
        if database_url is None
        else None
    )
    out["datastore_mb"] = round(
        sum(
            p.stat().st_size
            for p in root.rglob("*")
            if p.is_file() and "labelloop.db" not in p.name
        )
        / 2**20,
        2,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.database_url, args.labels)))
        return
    results = []
    for size in args.sizes:
        cmd = [
            sys.executable,
            "-m",
            "bench.scale",
            "--one",
            str(size),
            "--labels",
            str(args.labels),
        ]
        if args.database_url:
            cmd += ["--database-url", args.database_url]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
