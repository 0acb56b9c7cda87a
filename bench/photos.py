"""Photos: edit rate per learner, embedding throughput, single-photo predict latency and memory.

The photo set is a folder with one sub-folder of photographs per class, obtained by whoever runs
the bench (docs/BENCHMARKS.md says which one was used); photos are never part of the project.

    python -m bench.photos stream data/clothing --limit 1000 --seed 0 \\
        --learners auto pool-svm embedding-logreg embedding-spread
    python -m bench.photos stream digits --learners auto
    python -m bench.photos throughput data/clothing
    python -m bench.photos serving data/clothing

``stream`` runs the edit-rate protocol of bench/edit_rate.py (items imported and featurized first,
labelled in a random order by an annotator who gives the true label) once per learner, on one server;
the first task featurizes the photos and the others start from a copy of its feature cache
(``Preprocess/features``, keyed by content hash and featurizer version), so each photo goes through
the backbone once.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench import datasets
from labelloop.client import Client
from labelloop.demo import free_port, running_server
from labelloop.simulation import run_stream


def photo_set(folder: Path, limit: int | None, seed: int) -> datasets.Dataset:
    """Photos of a folder-per-class set; ``limit`` draws that many at random (all classes kept)."""
    pairs = [
        (str(p), d.name)
        for d in sorted(folder.iterdir())
        if d.is_dir()
        for p in sorted(d.iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    labels = sorted({label for _, label in pairs})
    return datasets.Dataset(
        folder.name,
        "image-classification",
        labels,
        [p for p, _ in pairs],
        [label for _, label in pairs],
    )


def wait_featurized(client: Client, task_id: int) -> None:
    while client.get_task(task_id)["counts"]["pending"]:
        time.sleep(1.0)


def stream(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="labelloop-photos-") as tmp:
        work = Path(tmp)
        if str(args.folder) == "digits":
            ds = datasets.digits(work / "digits")
            root = work
        else:
            ds = photo_set(args.folder, args.limit, args.seed)
            root = args.folder
        data_dir = work / "data"
        print(f"{ds.name}: {len(ds.data)} items, {len(ds.labels)} classes", Counter(ds.truth))
        results: dict[str, Any] = {}
        feature_dirs: list[Path] = [args.features_from] if args.features_from else []
        with (
            running_server(
                data_dir, free_port(), ["--import-root", str(root)], log=work / "server.log"
            ) as server,
            Client(server.url, timeout=900) as client,
        ):
            for learner in args.learners:
                policy: dict[str, Any] = {} if learner == "auto" else {"learner": learner}
                task = client.create_task(
                    f"{ds.name} {learner}", ds.category, ds.labels, policy=policy
                )
                tid = task["id"]
                for earlier in feature_dirs:
                    # Start from the earlier tasks' feature caches: each photo is embedded once.
                    shutil.copytree(
                        earlier,
                        data_dir / f"task-{tid}" / "Preprocess" / "features",
                        dirs_exist_ok=True,
                    )
                started = time.perf_counter()
                added = client.add_items(
                    tid, [{"data": d, "external_id": str(i)} for i, d in enumerate(ds.data)]
                )
                ids = [it["id"] for it in added["items"]]
                wait_featurized(client, tid)
                featurize_s = time.perf_counter() - started
                feature_dirs.append(data_dir / f"task-{tid}" / "Preprocess" / "features")
                order = np.random.RandomState(args.seed).permutation(len(ids))
                result = run_stream(client, tid, [(ids[i], [ds.truth[i]]) for i in order])
                out = result.summary()
                models = client.models(tid)
                out.update(
                    featurize_seconds=round(featurize_s, 1),
                    learners_served=dict(Counter(str(m["learner"]) for m in models)),
                    last_choice=(models[-1].get("metrics") or {}).get("learner_choice")
                    if models
                    else None,
                )
                results[learner] = out
                print(learner, json.dumps(out), flush=True)
            if args.save_features and feature_dirs:
                # Keep the photos' features for a later run (``--features-from``).
                for earlier in feature_dirs[1 if args.features_from else 0 :]:
                    shutil.copytree(earlier, args.save_features, dirs_exist_ok=True)
    summary = {
        "dataset": ds.name,
        "items": len(ds.data),
        "classes": len(ds.labels),
        "seed": args.seed,
        "edit_rate": {k: v["edit_rate"] for k, v in results.items()},
        "edit_rate_second_half": {k: v["edit_rate_second_half"] for k, v in results.items()},
        "runs": results,
    }
    return summary


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Images per second through the default backbone (decode + resize + forward), 1 and 2 threads."""
    import torch

    from labelloop.learners.embedding import backbone_featurizer

    ds = photo_set(args.folder, args.images, args.seed)
    raws = [Path(p).read_bytes() for p in ds.data]
    fz = backbone_featurizer(None)
    fz.transform(raws[:4])  # load and warm
    out: dict[str, Any] = {"images": len(raws)}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fz.transform(raws)
            runs.append(len(raws) / (time.perf_counter() - t))
        out[f"cpu_{threads}_threads_images_per_s"] = round(statistics.median(runs), 2)
    out["gpu"] = "not run: no GPU available" if not torch.cuda.is_available() else "see cuda figure"
    return out


def serving(args: argparse.Namespace) -> dict[str, Any]:
    """Single-photo POST /predict latency after warm-up, and RSS of the API and its workers."""
    import psutil  # type: ignore[import-untyped]

    ds = photo_set(args.folder, args.limit, args.seed)
    with tempfile.TemporaryDirectory(prefix="labelloop-photos-") as tmp:
        work = Path(tmp)
        with (
            running_server(
                work / "data", free_port(), ["--import-root", str(args.folder)], log=work / "s.log"
            ) as server,
            Client(server.url, timeout=900) as client,
        ):
            task = client.create_task("photos", ds.category, ds.labels)
            tid = task["id"]
            added = client.add_items(tid, [{"data": d} for d in ds.data])
            wait_featurized(client, tid)
            ids = [it["id"] for it in added["items"]]
            client.annotate(
                tid,
                [
                    {"item_id": i, "labels": [t]}
                    for i, t in zip(ids[: args.labels], ds.truth[: args.labels], strict=True)
                ],
            )
            client.wait_for_training(tid)
            learner = client.models(tid)[-1]["learner"]
            photos = ds.data[args.labels :]
            for d in photos[:5]:  # warm-up
                client.predict(tid, [d])
            times = []
            for d in photos[5 : 5 + args.requests]:
                t = time.perf_counter()
                client.predict(tid, [d])
                times.append((time.perf_counter() - t) * 1000)
            proc = psutil.Process(server.pid)
            api_rss = proc.memory_info().rss
            workers = [c.memory_info().rss for c in proc.children(recursive=True)]
    times.sort()
    return {
        "learner": learner,
        "requests": len(times),
        "predict_p50_ms": round(times[len(times) // 2], 1),
        "predict_p90_ms": round(times[int(len(times) * 0.9)], 1),
        "api_rss_mib": round(api_rss / 2**20, 1),
        "worker_rss_mib": [round(w / 2**20, 1) for w in workers],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stream")
    s.add_argument("folder", type=Path)
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--learners",
        nargs="+",
        default=["auto", "pool-svm", "embedding-logreg", "embedding-spread"],
    )
    s.add_argument(
        "--features-from",
        type=Path,
        default=None,
        help="a Preprocess/features folder of an earlier run to start every task's cache from",
    )
    s.add_argument(
        "--save-features",
        type=Path,
        default=None,
        help="copy the run's feature caches there at the end (for a later --features-from)",
    )
    t = sub.add_parser("throughput")
    t.add_argument("folder", type=Path)
    t.add_argument("--images", type=int, default=64)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("serving")
    v.add_argument("folder", type=Path)
    v.add_argument("--limit", type=int, default=300)
    v.add_argument("--labels", type=int, default=100)
    v.add_argument("--requests", type=int, default=50)
    v.add_argument("--seed", type=int, default=0)
    for p in (s, t, v):
        p.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {"stream": stream, "throughput": throughput, "serving": serving}[args.cmd](args)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
