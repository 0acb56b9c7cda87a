"""Active ordering, auto-labelling and label-error flags, measured through a real server.

    python -m bench.active auto digits --seeds 0 1 2 3 4 5 6 7 8 9 --target 0.98 # human share
    python -m bench.active auto digits --seeds 0 1 2 --scope dataset # target for the whole data set
    python -m bench.active reach digits --seeds 0 1 2                  # labels to 95%: active vs random
    python -m bench.active auto trec6 --seeds 0 --target 0.95
    python -m bench.active suspects digits --seeds 0 1 2 --flip 0.05   # precision/recall of /suspects

Accuracy "on the pool" is the served model's accuracy, against the truth, on the items no person
has labelled yet (what the next pre-labels will be judged on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import datasets
from labelloop.client import Client
from labelloop.demo import free_port, running_server
from labelloop.errors import ConnectionFailed
from labelloop.simulation import Annotator, run_active, run_stream

#: What each promoted version's auto-labelling estimate is recorded with (``--out``).
HISTORY_KEYS = ("heldout", "above", "threshold", "lower_bound", "reason")


def load(name: str, work: Path) -> datasets.Dataset:
    if name == "digits":
        return datasets.digits(work / "digits")
    return {"trec6": datasets.trec, "sms": datasets.sms}[name]()


def setup(client: Client, ds: datasets.Dataset, policy: dict[str, Any]) -> tuple[int, list[int]]:
    """A task with every item; with ``policy.seed``, external ids carry the seed: the task's
    stable random order is a hash of the task, the external id and the data
    (``store.models.lottery_of``), so without it every seed would give the first task of a fresh
    server the same order, the same audits and the same run."""
    task = client.create_task(ds.name, ds.category, ds.labels, policy=policy)
    prefix = f"seed{policy['seed']}-" if policy.get("seed") is not None else ""
    added = client.add_items(
        task["id"], [{"data": d, "external_id": f"{prefix}{i}"} for i, d in enumerate(ds.data)]
    )
    while client.get_task(task["id"])["counts"]["pending"]:
        time.sleep(0.5)
    return int(task["id"]), [int(it["id"]) for it in added["items"]]


def pool_accuracy(
    client: Client, task_id: int, ds: datasets.Dataset, ids: list[int], labelled: set[int]
) -> float:
    rest = [i for i, item_id in enumerate(ids) if item_id not in labelled]
    if not rest:
        return 1.0
    answer = client.predict(task_id, [ds.data[i] for i in rest])
    right = sum(
        p["labels"] == [ds.truth[i]] for p, i in zip(answer["predictions"], rest, strict=True)
    )
    return right / len(rest)


def run(
    kind: str,
    ds: datasets.Dataset,
    seed: int,
    work: Path,
    target: float,
    flip: float,
    scope: str = "model-labels",
    extra_policy: dict[str, Any] | None = None,
    attempt: int = 0,
) -> dict[str, Any]:
    with (
        running_server(
            work / f"{ds.name}-{kind}-{seed}-{attempt}", free_port(), ["--import-root", str(work)]
        ) as server,
        Client(server.url, timeout=600) as client,
    ):
        if kind == "auto":
            # The seed fixes the task's random choices (first order, audits); digits are learned
            # from pixels (``pool-svm``) unless --policy names another learner, as measured
            # before image backbones existed (the ``auto`` learner would load a CNN per run).
            auto_policy: dict[str, Any] = {
                "seed": seed,
                **({"learner": "pool-svm"} if ds.category == "image-classification" else {}),
                **(extra_policy or {}),
            }
            auto_policy["auto_label"] = {
                "target_accuracy": target,
                "scope": scope,
                **auto_policy.get("auto_label", {}),
            }
            t, ids = setup(client, ds, auto_policy)
            truth = {item_id: [ds.truth[i]] for i, item_id in enumerate(ids)}
            result = run_active(client, t, truth)
            out = result.summary()
            out["auto_label"] = client.get_task(t)["auto_label"]
            out["history"] = [
                {"version": v["version"], "labels": v["metrics"].get("n_labels")}
                | {k: v["metrics"]["auto_label"].get(k) for k in HISTORY_KEYS}
                for v in sorted(client.models(t), key=lambda v: v["version"])
                if v["promoted"] and v["metrics"].get("auto_label")
            ]
            return out
        if kind == "reach":
            out: dict[str, Any] = {}
            for order in ("active", "random"):
                policy: dict[str, Any] = {
                    "selection": "margin" if order == "active" else "random",
                    "seed": seed,
                }
                t, ids = setup(client, ds, policy)
                truth = {item_id: [ds.truth[i]] for i, item_id in enumerate(ids)}
                labelled: set[int] = set()
                reached: list[int] = []

                def measure(
                    n: int, t: int = t, ids: list[int] = ids, labelled: set[int] = labelled
                ) -> dict[str, Any]:
                    return {"pool_accuracy": pool_accuracy(client, t, ds, ids, labelled)}

                def done(point: dict[str, Any], reached: list[int] = reached) -> bool:
                    if point["pool_accuracy"] >= 0.95:
                        reached.append(point["labels"])
                        return True
                    return False

                tracking = Annotator(ds.labels)
                original = tracking.label

                def remember(
                    item_id: int,
                    labels: list[str],
                    original: Any = original,
                    labelled: set[int] = labelled,
                ) -> list[str]:
                    labelled.add(item_id)
                    return list(original(item_id, labels))

                tracking.label = remember  # type: ignore[method-assign]
                if order == "active":
                    run_active(client, t, truth, noise=tracking, on_train=measure, stop=done)
                else:
                    stream = [
                        (ids[i], truth[ids[i]])
                        for i in np.random.RandomState(seed).permutation(len(ids))
                    ]
                    run_stream(client, t, stream, noise=tracking, on_train=measure, stop=done)
                out[f"{order}_labels_to_95"] = reached[0] if reached else None
            a, r = out["active_labels_to_95"], out["random_labels_to_95"]
            out["ratio"] = a / r if a and r else None
            return out
        # suspects: every item labelled once in random order by an annotator who flips `flip`.
        t, ids = setup(client, ds, {})
        noise = Annotator(ds.labels, flip, seed)
        stream = [
            (ids[i], [ds.truth[i]]) for i in np.random.RandomState(seed).permutation(len(ids))
        ]
        run_stream(client, t, stream, noise=noise)
        client.train(t)
        client.wait_for_training(t)
        flagged = {s["item_id"] for s in client.suspects(t, limit=10_000)["suspects"]}
        hits = len(flagged & noise.flipped)
        return {
            "planted": len(noise.flipped),
            "flagged": len(flagged),
            "precision": hits / len(flagged) if flagged else None,
            "recall": hits / len(noise.flipped) if noise.flipped else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["auto", "reach", "suspects"])
    parser.add_argument("dataset", choices=["digits", "trec6", "sms"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--scope", choices=["model-labels", "dataset"], default="model-labels")
    parser.add_argument("--policy", type=json.loads, default={}, help="more policy, as JSON")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-") as tmp:
        ds = load(args.dataset, Path(tmp))
        for seed in args.seeds:
            for attempt in range(5):  # a loaded machine may not start the server in time
                try:
                    r = run(
                        args.kind,
                        ds,
                        seed,
                        Path(tmp),
                        args.target,
                        args.flip,
                        args.scope,
                        args.policy,
                        attempt,
                    )
                    break
                except ConnectionFailed:
                    if attempt == 4:
                        raise
            r["seed"] = seed
            runs.append(r)
            print(json.dumps(r), flush=True)
    numeric = {k for k, v in runs[0].items() if isinstance(v, (int, float)) and k != "seed"}
    summary = {
        "kind": args.kind,
        "dataset": args.dataset,
        "seeds": args.seeds,
        "target": args.target,
        "mean": {
            k: statistics.mean(float(r[k]) for r in runs if r.get(k) is not None)
            for k in sorted(numeric)
        },
        "runs": runs,
    }
    if args.kind == "auto":
        shares = [float(r["human_share"]) for r in runs]
        summary["human_share"] = {
            "median": statistics.median(shares),
            "mean": statistics.mean(shares),
            "worst": max(shares),
            "runs_at_most_15%": sum(s <= 0.15 for s in shares),
            "lowest_final_accuracy": min(float(r["final_accuracy"]) for r in runs),
        }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
