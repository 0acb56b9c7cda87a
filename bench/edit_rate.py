"""Edit rate of the assist loop on a labelling stream, through the HTTP API of a real server.

Protocol (docs/BENCHMARKS.md): items imported and featurized first, then labelled in a random order (numpy permutation of the seed), a
simulated annotator who always gives the true label after seeing the pre-label and waits for a
triggered training to finish, first model at 10 labels, retraining on 10% growth.

    python -m bench.edit_rate digits --seeds 0 1 2
    python -m bench.edit_rate trec6 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import datasets
from labelloop.client import Client
from labelloop.demo import free_port, running_server
from labelloop.simulation import run_stream


def run_one(
    ds: datasets.Dataset, seed: int, work: Path, policy: dict[str, object]
) -> dict[str, object]:
    data_dir = work / f"{ds.name}-{seed}"
    with (
        running_server(
            data_dir, free_port(), ["--import-root", str(work)], log=work / "server.log"
        ) as server,
        Client(server.url, timeout=600) as client,
    ):
        task = client.create_task(f"{ds.name} seed {seed}", ds.category, ds.labels, policy=policy)
        added = client.add_items(
            task["id"], [{"data": d, "external_id": str(i)} for i, d in enumerate(ds.data)]
        )
        ids = [it["id"] for it in added["items"]]
        # A team imports its items before it starts labelling: wait for their featurization.
        while client.get_task(task["id"])["counts"]["pending"]:
            time.sleep(0.5)
        order = np.random.RandomState(seed).permutation(len(ids))
        stream = [(ids[i], [ds.truth[i]]) for i in order]
        started = time.perf_counter()
        result = run_stream(client, task["id"], stream)
        out = result.summary()
        out.update(seed=seed, dataset=ds.name, total_seconds=time.perf_counter() - started)
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=["digits", "trec6", "sms"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policy", type=json.loads, default={}, help="policy JSON for the task")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-") as tmp:
        work = Path(tmp)
        ds = {
            "digits": lambda: datasets.digits(work / "digits"),
            "trec6": datasets.trec,
            "sms": datasets.sms,
        }[args.dataset]()
        runs = []
        for seed in args.seeds:
            r = run_one(ds, seed, work, args.policy)
            runs.append(r)
            print(json.dumps(r), flush=True)
    summary = {
        "dataset": args.dataset,
        "policy": args.policy,
        "seeds": args.seeds,
        "edit_rate_mean": statistics.mean(float(r["edit_rate"]) for r in runs),  # type: ignore[arg-type]
        "edit_rate_second_half_mean": statistics.mean(
            float(r["edit_rate_second_half"]) for r in runs
        ),  # type: ignore[arg-type]
        "median_update_latency_s": statistics.median(
            float(r["median_update_latency_s"])
            for r in runs
            if r["median_update_latency_s"] is not None
        ),  # type: ignore[arg-type]
        "first_model_seconds_median": statistics.median(
            float(r["first_model_seconds"]) for r in runs if r["first_model_seconds"] is not None
        ),  # type: ignore[arg-type]
        "runs": runs,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
