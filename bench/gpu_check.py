"""Distributed fine-tuning on CUDA: one process, then two NCCL processes (one GPU each); prints
the epoch times and the held-out accuracy of each (docs/BENCHMARKS.md, "Distributed fine-tuning").

    python -m bench.gpu_check --items 4096 --epochs 5

The data are synthetic maps of EfficientNet-Lite0's block 13 (as in bench/distributed_epochs.py)
with labels a linear rule of the maps gives; the fit is the real rank process of
labelloop.distributed (``nccl`` is chosen when CUDA is there). Needs a GPU; two for the second run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.distributed_epochs import CUT, SHAPE, data
from labelloop.distributed import world as worlds
from labelloop.distributed.trainer import TrainParams, build_tail
from labelloop.distributed.world import LocalLauncher, WorldConfig


def accuracy(weights: dict[str, object], maps: np.ndarray, y: np.ndarray) -> float:
    import torch

    model = build_tail(CUT, 2)
    model.load_state_dict(weights)
    model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(maps.astype(np.float32).reshape(len(maps), *SHAPE))
        return float((model(x).argmax(1).numpy() == y).mean())


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        print("no CUDA device: nothing to check")
        return 1
    maps, y = data(args.items + 1024)
    test_maps, test_y = maps[args.items :], y[args.items :]
    maps, y = maps[: args.items], y[: args.items]
    params = TrainParams(epochs=args.epochs, batch_size=args.batch_size, patience=100, budget_s=1e9)
    for ranks in (1, 2):
        if ranks > gpus:
            print(f"{ranks} NCCL processes need {ranks} GPUs; this machine has {gpus}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "fit"
            worlds.write_input(folder, params, maps, y, SHAPE, CUT, build_tail(CUT, 2))
            config = WorldConfig(LocalLauncher(ranks), "gpu", worlds.parse_ports("29700-29799"))
            started = time.perf_counter()
            worlds.run_world(folder, f"gpu/{ranks}", config)
            wall = time.perf_counter() - started
            final = torch.load(folder / worlds.FINAL_FILE, weights_only=False, map_location="cpu")
        seconds = final["epoch_seconds"]
        row = {
            "ranks": ranks,
            "backend": "nccl",
            "epoch_seconds": [round(s, 3) for s in seconds],
            "median_epoch_s": round(statistics.median(seconds[1:] or seconds), 3),
            "wall_s": round(wall, 1),
            "held_out_accuracy": round(accuracy(final["weights"], test_maps, test_y), 4),
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
