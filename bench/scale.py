"""A large task: what importing, training, ``/next`` and ``/predictions`` cost as the pool grows.

    python -m bench.scale                                  # 10,000 and 100,000 items
    python -m bench.scale --sizes 10000 100000 1000000 --out bench/results/scale.json
    python -m bench.scale --featurize 1024 --workers 1 2   # featurize scale-out (embeddings)
    python -m bench.scale --sizes 10000 --keep; python -m bench.scale --probe DIR...  # CPU/call

Each size runs in its own process (its peak RSS is its own), on a fresh embedded store (SQLite;
``--database-url`` for PostgreSQL), through the service layer (no HTTP: the figures are the
store's and the code's, not the server's), with the embedded local workers running the jobs. Per
size, a text task with the cheap featurizer (words only, no embeddings: texts are ready at import):

- ``import``: synthetic texts through ``add_items`` in requests of 10,000 (near-copy signatures
  included), items/s;
- then 300 labels as an annotator gives them: ``/next?limit=10&annotator=…``, ``/predictions``
  of each item, one ``POST /annotations`` per item, while the policy trains in the background;
  p50 and p99 of each, the time from the first label to the first served model, and every
  version's training time (the job's wall time: it reads the labels and a sample of
  ``train_pool_sample`` items, and predicts that sample) until the task is idle or ``--idle-wait``
  runs out (``--train-wait`` for the first model); then the background rescoring: chunk jobs
  run (head and tail), their median time, what picking the next chunk took, how long after the
  last promotion its head and the whole pool were rescored, and the share of the pool the served
  version has scored; with ``--retrain``, one more label and a training asked for on the idle
  task (a triggered training's wall time without the labelling beside it);
- ``knn``: the density graph of ``size`` 64-dimensional feature rows (``learners/neighbours.py``)
  up to ``--knn-max`` rows, and the brute-force graph it replaces where affordable (≤ 20,000);
- peak RSS of this process and of the largest worker, the store's and the data folder's size.

``--probe DIR…``: ``/next`` and ``/predictions`` again on stores that runs with ``--keep`` left,
one after another in one quiet process: wall and CPU time per call (the CPU time does not depend
on the machine's load), after one untimed call of each (a fresh process's imports and caches),
whose time is reported apart (``first_call``).

``--import-only`` stops a size after its import (with ``--keep``: the store stays);
``--resume DIR…`` labels, trains and rescores such stores (the build is the long part at 1M, and
it does not depend on the loop's code). ``--database-url`` takes a PostgreSQL URL for all of it
(``--probe`` and ``--resume`` too: the data folder holds the models, the database the rest).

``--featurize N --workers 1 2``: featurize throughput of ``N`` texts with sentence embeddings (the
costly featurizer), per number of bulk workers, after each worker has loaded its model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ["a", "b", "c"]
#: The default policy's labels before the first training.
MIN_LABELS = 10
WORDS = np.array(
    [
        "the",
        "a",
        "cat",
        "dog",
        "market",
        "price",
        "fell",
        "rose",
        "team",
        "won",
        "lost",
        "game",
        "rain",
        "sun",
        "city",
        "road",
        "car",
        "train",
        "film",
        "song",
        "book",
        "phone",
        "call",
        "late",
        "early",
        "good",
        "bad",
        "new",
        "old",
        "red",
        "blue",
        "big",
        "small",
    ]
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * statistics.median(values), 2),
        "p99_ms": round(1000 * percentile(values, 0.99), 2),
    }


def texts(rng: np.random.Generator, n: int) -> list[str]:
    """Short synthetic texts: eight common words and one of a long tail of 20,000 (Zipf), so the
    vocabulary stops growing with the pool as real texts' does. The label follows the first
    word's group, so models learn. Texts may repeat, as real ones do."""
    picks = rng.integers(0, len(WORDS), (n, 8))
    tail = np.minimum(rng.zipf(1.3, n), 20_000)
    return [f"{' '.join(WORDS[p])} w{k}" for p, k in zip(picks, tail, strict=True)]


def truth(text: str) -> str:
    return LABELS[int(np.flatnonzero(text.split()[0] == WORDS)[0]) % len(LABELS)]


def wait(done: Callable[[], bool], limit_s: float) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if done():
            return True
        time.sleep(0.5)  # a bench polls the store; tests wait on events
    return done()


def runtime(root: Path, database_url: str | None, workers: int) -> Any:
    from labelloop.config import Settings
    from labelloop.jobs.local import LocalJobs
    from labelloop.runtime import Runtime

    rt = Runtime(
        Settings(data_dir=root, database_url=database_url, local_workers=workers),
        migrate_schema=True,
    )
    rt.attach_jobs(LocalJobs(rt))
    rt.jobs.start()
    return rt


def make_task(rt: Any, policy: dict[str, Any]) -> int:
    from labelloop.schemas import TaskCreate
    from labelloop.service import tasks

    spec = TaskCreate(name="scale", category="text-classification", labels=LABELS, policy=policy)
    return int(tasks.create_task(rt, spec)["id"])


def import_items(rt: Any, t: int, rng: np.random.Generator, size: int) -> float:
    from labelloop.schemas import ItemCreate
    from labelloop.service import items

    started = time.perf_counter()
    for start in range(0, size, 10_000):
        batch = texts(rng, min(size, start + 10_000) - start)
        items.add_items(rt, t, [ItemCreate(data=x) for x in batch])
    return size / (time.perf_counter() - started)


def busy(rt: Any, t: int) -> bool:
    from sqlalchemy import func, select

    from labelloop.store.models import ACTIVE_JOB_STATES, Job

    with rt.reading() as s:
        return bool(
            s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.task_id == t, Job.state.in_(ACTIVE_JOB_STATES))
            )
        )


def served(rt: Any, t: int) -> bool:
    from labelloop.store.models import Task

    with rt.reading() as s:
        return s.get_one(Task, t).served_version is not None


def label(rt: Any, t: int, labels: int) -> dict[str, Any]:
    """``labels`` labels as an annotator gives them; the loop trains meanwhile."""
    from labelloop.schemas import AnnotationCreate
    from labelloop.service import labelling, predictions

    nxt: list[float] = []
    pre: list[float] = []
    ann: list[float] = []
    first_label = first_model = None
    given = 0
    while given < labels:
        t0 = time.perf_counter()
        batch = predictions.next_items(rt, t, 10, "annotator")["items"]
        nxt.append(time.perf_counter() - t0)
        for it in batch:
            t0 = time.perf_counter()
            p = predictions.get_prediction(rt, t, it["id"])
            pre.append(time.perf_counter() - t0)
            if first_model is None and p["model_version"] is not None:
                first_model = time.perf_counter()
            t0 = time.perf_counter()
            one = AnnotationCreate(
                item_id=it["id"], labels=[truth(it["data"])], shown_version=p["model_version"]
            )
            labelling.submit(rt, t, [one], "annotator")
            ann.append(time.perf_counter() - t0)
            given += 1
            if given == MIN_LABELS:  # the label that triggers the first training
                first_label = time.perf_counter()
    return {
        "next": ms(nxt),
        "predictions": ms(pre),
        "annotate": ms(ann),
        "first_label_at": first_label,
        "first_model_at": first_model,
    }


def probe(root: Path, calls: int, database_url: str | None = None) -> dict[str, Any]:
    """``/next`` and ``/predictions`` on a store a size run left (``--keep``), one after another,
    by a fresh annotator who labels nothing: wall time, and the thread's CPU time (what the
    request costs, whatever the machine's load). One untimed call of each first: a fresh
    process's first call pays its imports and caches (reported apart, ``first_call``)."""
    from sqlalchemy import func, select

    from labelloop.config import Settings
    from labelloop.jobs.local import LocalJobs
    from labelloop.runtime import Runtime
    from labelloop.service import predictions
    from labelloop.store.models import Item

    rt = Runtime(Settings(data_dir=root, database_url=database_url))
    rt.attach_jobs(LocalJobs(rt, workers=1, threads=True))  # pre-labels missing: scored here
    with rt.session() as s:
        t, n = s.execute(select(Item.task_id, func.count()).group_by(Item.task_id)).one()
    w = time.perf_counter()
    batch = predictions.next_items(rt, t, 10, "probe-warm")["items"]
    first_next = time.perf_counter() - w
    w = time.perf_counter()
    predictions.get_prediction(rt, t, batch[0]["id"])
    first_pred = time.perf_counter() - w
    wall: dict[str, list[float]] = {"next": [], "predictions": []}
    cpu: dict[str, list[float]] = {"next": [], "predictions": []}
    for k in range(calls):
        w, c = time.perf_counter(), time.thread_time()
        batch = predictions.next_items(rt, t, 10, f"probe-{k}")["items"]
        wall["next"].append(time.perf_counter() - w)
        cpu["next"].append(time.thread_time() - c)
        w, c = time.perf_counter(), time.thread_time()
        predictions.get_prediction(rt, t, batch[0]["id"])
        wall["predictions"].append(time.perf_counter() - w)
        cpu["predictions"].append(time.thread_time() - c)
    picks = pick_costs(rt, t)
    rt.close()
    out: dict[str, Any] = {
        "items": n,
        "pick": picks,
        "first_call": {
            "next_ms": round(1000 * first_next, 1),
            "predictions_ms": round(1000 * first_pred, 1),
        },
    }
    for name in wall:
        out[name] = ms(wall[name]) | {f"cpu_{k}": v for k, v in ms(cpu[name]).items()}
    return out


def pick_costs(rt: Any, t: int, size: int = 5_000, rounds: int = 5) -> dict[str, Any]:
    """What a rescoring costs to plan per chunk: picks of ``size`` ids (the chunk) from the head's
    start and from the tail's start, as a promotion after the last one would make them (every
    item still to do), read-only: wall and CPU time, medians of ``rounds``."""
    from labelloop.loop.labels import human_labels
    from labelloop.loop.rescoring import Plan, pick
    from labelloop.store.models import Task

    out: dict[str, Any] = {}
    for phase in ("head", "tail"):
        wall, cpu = [], []
        for _ in range(rounds):
            w, c = time.perf_counter(), time.thread_time()
            with rt.reading() as s:
                task = s.get_one(Task, t)
                labelled = human_labels(s, task).labels
                plan = Plan(
                    planner=0,
                    promotion=task.promotions + 1,
                    everything=True,
                    phase=phase,  # type: ignore[arg-type]
                    head_left=size,
                )
                ids, _ = pick(s, t, int(task.served_version or 0), plan, size, labelled)
            wall.append(time.perf_counter() - w)
            cpu.append(time.thread_time() - c)
        out[phase] = {"ids": len(ids)} | ms(wall) | {f"cpu_{k}": v for k, v in ms(cpu).items()}
    return out


def trainings(rt: Any, t: int) -> dict[str, Any]:
    from sqlalchemy import select

    from labelloop.store.models import ModelVersion, Task

    with rt.session() as s:
        rows = s.execute(
            select(ModelVersion.train_seconds, ModelVersion.metrics, ModelVersion.n_labels).where(
                ModelVersion.task_id == t, ModelVersion.status == "ready"
            )
        ).all()
        served = s.get_one(Task, t).served_version
    secs = [float(r.train_seconds) for r in rows if r.train_seconds]
    each = [
        {
            "labels": r.n_labels,
            "train_s": round(float(r.train_seconds), 2) if r.train_seconds else None,
            "read": (r.metrics or {}).get("n_read"),
        }
        for r in rows
    ]
    pool = [float((r.metrics or {}).get("phases_seconds", {}).get("predict_pool", 0)) for r in rows]
    return {
        "versions": len(rows),
        "served_version": served,
        "train_s_median": round(statistics.median(secs), 2) if secs else None,
        "train_s_max": round(max(secs), 2) if secs else None,
        "predict_pool_s_median": round(statistics.median(pool), 2) if pool else None,
        "labels_at_versions": [r.n_labels for r in rows],
        "each_training": each,
    }


def rescoring(rt: Any, t: int) -> dict[str, Any]:
    """The background re-prediction after promotions: the chunk jobs that ran (not those a newer
    promotion superseded), their median wall time, what picking each next chunk took (the plan's
    read: a chunk of rows, whatever the pool), chunks per phase (head: the most uncertain
    ``rescore_head`` items of each promotion; tail: the rest, stalest first), and how much of the
    pool the served version has scored."""
    from sqlalchemy import func, select

    from labelloop.store.models import Item, Job, ModelVersion, Prediction, Task

    with rt.session() as s:
        task = s.get_one(Task, t)
        version = task.served_version
        promoted_at = s.scalar(
            select(ModelVersion.promoted_at).where(
                ModelVersion.task_id == t, ModelVersion.version == version
            )
        )
        ran = s.execute(
            select(Job.started_at, Job.finished_at, Job.result, Job.key).where(
                Job.task_id == t, Job.kind.in_(["predict", "rescore"]), Job.state == "done"
            )
        ).all()
        last = [
            r
            for r in ran
            if r.key.startswith(f"predict:{t}:{version}:{task.promotions}:") and r.finished_at
        ]
        scored = s.scalar(
            select(func.count())
            .select_from(Prediction)
            .where(Prediction.task_id == t, Prediction.version == version)
        )
        pool = s.scalar(select(func.count()).select_from(Item).where(Item.task_id == t))
    secs = [
        (r.finished_at - r.started_at).total_seconds()
        for r in ran
        if r.started_at and r.finished_at and "predicted" in (r.result or {})
    ]
    picks = [float(r.result["pick_s"]) for r in ran if "pick_s" in (r.result or {})]
    phases = [str(r.result["phase"]) for r in ran if "phase" in (r.result or {})]
    skipped = [r for r in ran if (r.result or {}).get("skipped") == "superseded"]

    def since_promotion(rows: list[Any]) -> float | None:
        """Seconds from the served version's promotion to the end of the last of ``rows``."""
        if not rows or promoted_at is None:
            return None
        end = max(r.finished_at for r in rows)
        start = promoted_at
        if end.tzinfo is None or start.tzinfo is None:  # SQLite returns naive UTC
            end, start = end.replace(tzinfo=None), start.replace(tzinfo=None)
        return round((end - start).total_seconds(), 1)

    head = [r for r in last if (r.result or {}).get("phase") == "head"]
    return {
        "last_promotion_head_done_s": since_promotion(head),
        "last_promotion_pool_done_s": since_promotion(last),
        "rescore_chunks_run": len(secs),
        "rescore_chunks_superseded": len(skipped),
        "rescore_chunks_head_tail": [phases.count("head"), phases.count("tail")],
        "rescore_chunk_s_median": round(statistics.median(secs), 2) if secs else None,
        "rescore_pick_s_median": round(statistics.median(picks), 3) if picks else None,
        "rescore_pick_s_max": round(max(picks), 3) if picks else None,
        "served_version_scored_share": round(int(scored or 0) / max(int(pool or 0), 1), 4),
    }


def knn(size: int, rng: np.random.Generator) -> dict[str, float]:
    from labelloop.learners.neighbours import knn_graph

    X = rng.normal(size=(size, 64)).astype(np.float32)
    X += 4 * rng.normal(size=(100, 64)).astype(np.float32)[rng.integers(0, 100, size)]
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    knn_graph(X, 5)
    out["knn_graph_s"] = round(time.perf_counter() - t0, 2)
    if size <= 20_000:
        from sklearn.neighbors import NearestNeighbors

        t0 = time.perf_counter()
        NearestNeighbors(n_neighbors=6).fit(X).kneighbors(X, return_distance=False)
        out["knn_brute_s"] = round(time.perf_counter() - t0, 2)
    return out


def sizes_on_disk(root: Path, database_url: str | None) -> dict[str, float | None]:
    files = [p for p in root.rglob("*") if p.is_file()]
    db = sum(p.stat().st_size for p in files if "labelloop.db" in p.name)
    rest = sum(p.stat().st_size for p in files if "labelloop.db" not in p.name)
    if database_url is not None:
        from sqlalchemy import create_engine, text

        engine = create_engine(database_url)
        with engine.connect() as conn:
            db = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        engine.dispose()
    return {"store_mb": round(db / 2**20, 1), "datastore_mb": round(rest / 2**20, 2)}


def task_of(rt: Any) -> int:
    from sqlalchemy import select

    from labelloop.store.models import Task

    with rt.reading() as s:
        return int(s.scalars(select(Task.id).order_by(Task.id)).first())


def pool_size(rt: Any, t: int) -> int:
    from sqlalchemy import func, select

    from labelloop.store.models import Item

    with rt.reading() as s:
        return int(s.scalar(select(func.count()).select_from(Item).where(Item.task_id == t)) or 0)


def retrain(rt: Any, t: int, wait_s: float) -> dict[str, Any]:
    """One more label and a training asked for at once, on a task that is idle: the wall time
    of a triggered training (the job's, from its start to its end) with the background
    rescoring of the previous promotion finished or stopped."""
    from sqlalchemy import select

    from labelloop.schemas import AnnotationCreate
    from labelloop.service import labelling, models, predictions
    from labelloop.store.models import Job

    it = predictions.next_items(rt, t, 1, "retrain")["items"][0]
    one = AnnotationCreate(item_id=it["id"], labels=[truth(it["data"])])
    labelling.submit(rt, t, [one], "retrain")
    job_id = int(models.train_now(rt, t)["job_id"])

    def finished() -> bool:
        with rt.reading() as s:
            job = s.get(Job, job_id)
            return job is not None and job.state in ("done", "failed")

    done = wait(finished, wait_s)
    with rt.reading() as s:
        job = s.get_one(Job, job_id)
        secs = (
            (job.finished_at - job.started_at).total_seconds()
            if job.started_at and job.finished_at
            else None
        )
        rescoring_jobs = s.scalars(
            select(Job.id).where(Job.task_id == t, Job.kind.in_(["predict", "rescore"]))
        ).all()
    return {
        "retrain_done": done,
        "retrain_labels": job.payload.get("n_labels"),
        "retrain_job_s": None if secs is None else round(secs, 2),
        "jobs_of_rescoring": len(rescoring_jobs),
    }


def one(size: int, database_url: str | None, labels: int, args: argparse.Namespace) -> dict:
    resume = args.resume_one
    root = Path(resume) if resume else Path(tempfile.mkdtemp(prefix="labelloop-scale-"))
    rt = runtime(root, database_url, workers=1)
    out: dict[str, Any] = {"items": size, "load_at_start": [round(x, 1) for x in os.getloadavg()]}
    rng = np.random.default_rng(0)
    if resume:
        t = task_of(rt)
        size = pool_size(rt, t)
        out |= {"items": size, "resumed": str(root)}
    else:
        policy = {"learner": "tfidf-svm", "learner_params": {"embeddings": False}}
        t = make_task(rt, policy)
        out["import_items_per_s"] = round(import_items(rt, t, rng, size))
    if not args.import_only:
        got = label(rt, t, labels)
        first_label, first_model = got.pop("first_label_at"), got.pop("first_model_at")
        if first_model is None and wait(lambda: served(rt, t), args.train_wait):
            first_model = time.perf_counter()
        idle = wait(lambda: not busy(rt, t), args.idle_wait)
        out |= got
        out["idle_after_labels"] = idle
        out["first_model_s"] = (
            round(first_model - first_label, 1) if first_model and first_label else None
        )
        if args.retrain:
            out |= retrain(rt, t, args.train_wait)
        out |= trainings(rt, t)
        out |= rescoring(rt, t)
    out["load_at_end"] = [round(x, 1) for x in os.getloadavg()]
    rt.jobs.stop()
    if size <= args.knn_max and not args.import_only:
        out |= knn(size, rng)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["peak_rss_worker_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    rt.close()
    out |= sizes_on_disk(root, database_url)
    if args.keep or resume:
        out["data_dir"] = str(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return out


def featurize_rate(n: int, workers: int) -> dict[str, Any]:
    """Texts per second through the featurize jobs (sentence embeddings), ``workers`` bulk workers,
    each warmed (its model loaded) by a first round of jobs."""
    from sqlalchemy import func, select

    from labelloop.schemas import ItemCreate
    from labelloop.service import items
    from labelloop.store.models import Item

    rt = runtime(Path(tempfile.mkdtemp(prefix="labelloop-fz-")), None, workers)
    t = make_task(rt, {"learner": "tfidf-svm", "learner_params": {"embeddings": True}})
    rng = np.random.default_rng(workers)

    def pending() -> int:
        with rt.session() as s:
            return int(
                s.scalar(select(func.count()).where(Item.task_id == t, Item.status == "pending"))
                or 0
            )

    warm = texts(rng, 64 * 2 * workers)
    items.add_items(rt, t, [ItemCreate(data=x) for x in warm])
    wait(lambda: pending() == 0, 600)
    started = time.perf_counter()
    items.add_items(rt, t, [ItemCreate(data=x) for x in texts(rng, n)])
    done = wait(lambda: pending() == 0, 1200)
    seconds = time.perf_counter() - started
    rt.jobs.stop()
    rt.close()
    shutil.rmtree(rt.data_dir, ignore_errors=True)
    return {"workers": workers, "texts": n, "done": done, "items_per_s": round(n / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--train-wait", type=float, default=600.0, help="for the first model")
    parser.add_argument("--idle-wait", type=float, default=600.0, help="for the last training")
    parser.add_argument("--knn-max", type=int, default=100_000)
    parser.add_argument("--featurize", type=int, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep each size's data folder")
    parser.add_argument("--probe", type=Path, nargs="+", default=None, help="kept data folders")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--import-only", action="store_true", help="stop after the import")
    parser.add_argument("--resume", type=Path, nargs="+", default=None, help="imported stores")
    parser.add_argument("--retrain", action="store_true", help="one more training when idle")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--resume-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe is not None:
        for root in args.probe:
            print(json.dumps(probe(root, args.calls, args.database_url)), flush=True)
        return
    if args.one is not None:
        print(json.dumps(one(args.one, args.database_url, args.labels, args)))
        return
    results: list[dict[str, Any]] = []
    if args.featurize is not None:
        for w in args.workers:
            results.append(featurize_rate(args.featurize, w))
            print(json.dumps(results[-1]), flush=True)
    else:
        runs: list[tuple[int, Path | None]] = [(size, None) for size in args.sizes]
        if args.resume is not None:
            runs = [(0, root) for root in args.resume]
        for size, root in runs:
            cmd = [sys.executable, "-m", "bench.scale", "--one", str(size)]
            cmd += ["--labels", str(args.labels), "--train-wait", str(args.train_wait)]
            cmd += ["--idle-wait", str(args.idle_wait)]
            cmd += ["--knn-max", str(args.knn_max)] + (["--keep"] if args.keep else [])
            cmd += ["--import-only"] if args.import_only else []
            cmd += ["--retrain"] if args.retrain else []
            cmd += [] if root is None else ["--resume-one", str(root)]
            if args.database_url:
                cmd += ["--database-url", args.database_url]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"size {size} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
