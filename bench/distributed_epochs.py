"""Epoch time of distributed fine-tuning with 1, 2 and 3 ranks on this machine (gloo, CPU), and the
bytes each rank exchanges per step (docs/BENCHMARKS.md, "Distributed fine-tuning").

    python -m bench.distributed_epochs --items 512 --epochs 3 --ranks 1 2 3

The data are synthetic feature maps of EfficientNet-Lite0's block 13 at 224 pixels (192 channels,
7x7, what ``finetune`` trains on), with labels a linear rule of the maps can learn; fitting is the
real :class:`~labelloop.distributed.trainer.Trainer` in real rank processes (``LocalLauncher``).
Every world is one rank per process, one PyTorch thread per rank. The figure is the median epoch
of rank 0 (the first epoch is left out: it warms up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from labelloop.distributed import world as worlds
from labelloop.distributed.trainer import TrainParams, build_tail
from labelloop.distributed.world import LocalLauncher, WorldConfig

CUT = 14  # train_blocks=2, the learner's default
SHAPE = (192, 7, 7)


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, int(np.prod(SHAPE)))).astype(np.float16)
    w = rng.normal(size=maps.shape[1])
    y = (maps.astype(np.float32) @ w > 0).astype(np.int64)
    return maps, y


def run(ranks: int, maps: np.ndarray, y: np.ndarray, params: TrainParams) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "fit"
        init = build_tail(CUT, 2, seed=params.seed)
        worlds.write_input(folder, params, maps, y, SHAPE, CUT, init)
        config = WorldConfig(LocalLauncher(ranks), "bench", worlds.parse_ports("29600-29699"))
        started = time.perf_counter()
        worlds.run_world(folder, f"bench/{ranks}", config)
        wall = time.perf_counter() - started
        final = torch.load(folder / worlds.FINAL_FILE, weights_only=False)
    seconds = final["epoch_seconds"]
    return {
        "ranks": ranks,
        "epoch_seconds": [round(s, 3) for s in seconds],
        "median_epoch_s": round(statistics.median(seconds[1:] or seconds), 3),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=Path("bench/results/distributed_epochs.json"))
    args = ap.parse_args()
    os.environ.setdefault("LABELLOOP_TORCH_THREADS", "1")
    maps, y = data(args.items)
    params = TrainParams(
        epochs=args.epochs, batch_size=args.batch_size, patience=100, budget_s=1e9, val_fraction=0
    )
    tail = build_tail(CUT, 2)
    n_params = sum(p.numel() for p in tail.parameters() if p.requires_grad)
    # DDP also broadcasts rank 0's buffers (batch norm's statistics) before every step.
    buffer_bytes = sum(b.numel() * b.element_size() for b in tail.buffers())
    rows = []
    for ranks in args.ranks:
        row = run(ranks, maps, y, params)
        # DDP all-reduces every gradient once per step (fp32); gloo's ring sends each rank
        # 2 (N - 1) / N of it.
        row["bytes_per_step_per_rank"] = int(2 * (ranks - 1) / ranks * 4 * n_params)
        row["buffer_bytes_per_step"] = buffer_bytes if ranks > 1 else 0
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["median_epoch_s"]
    out = {
        "items": args.items,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "trainable_params": n_params,
        "gradient_bytes": 4 * n_params,
        "buffer_bytes": buffer_bytes,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "runs": rows,
        "epoch_ratio_vs_1_rank": {
            str(r["ranks"]): round(float(r["median_epoch_s"]) / float(base), 2) for r in rows
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["epoch_ratio_vs_1_rank"]))


if __name__ == "__main__":
    main()
