"""What reading a few items' features costs in a large task: memory-mapped rows against the old
layout (one ``.npy`` per content hash, kept in a per-process table once read).

    python -m bench.feature_rows --rows 1000000 --dim 32 --old 100000 \
        --out bench/results/feature_rows.json

Synthetic features (``--dim`` float32 per item, a cheap featurizer's size); item ``i`` has the
content hash sha256(i). Built once in a temporary folder: ``--rows`` rows through
``FeatureRows.append`` (50,000 a call), and ``--old`` items in the old layout. Then each
measure runs in a fresh process (its memory is its own), ``--repeats`` times, alternating:

- ``rows-labelled`` / ``old-labelled``: the features of ``--labelled`` random items (what a
  training that reads the labelled items needs);
- ``rows-pool``: every row, ``--chunk`` items at a time, each chunk dropped after use (a pool
  predicted in chunks); ``old-pool``: every ``.npy`` of the old layout into the per-process table,
  as a training of the old code read its pool.

Per measure: wall seconds, and the growth of the process's anonymous memory (``RssAnon``: its
own), of its file pages mapped (``RssFile``: the kernel's page cache, shared and given back under
pressure) and of its peak RSS (``VmHWM``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

VERSION = "synthetic-v1"


def digest(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def vector(ids: np.ndarray, dim: int) -> np.ndarray:
    return (ids[:, None] * 0.001 + np.arange(dim)[None, :]).astype(np.float32)


def sample(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` distinct ids of 1..n, without a permutation of all n (8 MB at 1M: it would show)."""
    picked: set[int] = set()
    while len(picked) < k:
        picked.update(int(i) for i in rng.integers(1, n + 1, k - len(picked)))
    return sorted(picked)


def status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def build(root: Path, rows: int, old: int, dim: int) -> dict[str, float]:
    from labelloop.datastore import TaskFolder

    folder = TaskFolder(root, 1)
    store = folder.feature_rows(VERSION)
    started = time.perf_counter()
    for start in range(1, rows + 1, 50_000):
        ids = np.arange(start, min(rows + 1, start + 50_000))
        store.append(ids.tolist(), [digest(int(i)) for i in ids], vector(ids, dim))
    rows_s = time.perf_counter() - started
    started = time.perf_counter()
    legacy = TaskFolder(root, 2)
    for i in range(1, old + 1):
        path = legacy.feature_path(VERSION, digest(i))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vector(np.array([i]), dim)[0])
    old_s = time.perf_counter() - started
    return {"rows_write_s": round(rows_s, 1), "old_write_s": round(old_s, 1)}


def measure(root: Path, kind: str, n: int, labelled: int, chunk: int, seed: int) -> dict[str, Any]:
    """One measure, in this (fresh) process."""
    from labelloop.datastore import TaskFolder

    rng = np.random.default_rng(seed)
    before = status()
    started = time.perf_counter()
    kept: dict[str, np.ndarray] = {}
    if kind == "rows-labelled":
        store = TaskFolder(root, 1).feature_rows(VERSION)
        ids = sample(rng, n, labelled)
        found, got = store.get(ids, [digest(i) for i in ids])
        assert found.all() and len(got) == labelled
    elif kind == "rows-pool":
        store = TaskFolder(root, 1).feature_rows(VERSION)
        total = 0.0
        for start in range(1, n + 1, chunk):
            ids = list(range(start, min(n + 1, start + chunk)))
            found, got = store.get(ids, [digest(i) for i in ids])
            assert found.all()
            total += float(got[:, 0].sum())
    else:
        folder = TaskFolder(root, 2)
        picked = sample(rng, n, labelled) if kind == "old-labelled" else range(1, n + 1)
        for i in picked:
            h = digest(int(i))
            vec = folder.load_feature(VERSION, h)
            assert vec is not None
            kept[h] = vec  # the old per-process table
    seconds = time.perf_counter() - started
    after = status()
    return {
        "kind": kind,
        "items": labelled if kind.endswith("labelled") else n,
        "seconds": round(seconds, 3),
        "anon_mb": round((after["RssAnon"] - before["RssAnon"]) / 2**20, 1),
        "file_mb": round((after["RssFile"] - before["RssFile"]) / 2**20, 1),
        "peak_mb": round((after["VmHWM"] - before["VmHWM"]) / 2**20, 1),
        "rss_mb": round((after["RssAnon"] + after["RssFile"]) / 2**20, 1),
    }


def run_measure(
    root: Path, kind: str, n: int, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.feature_rows", "--measure", kind, "--root", str(root)]
    cmd += ["--n", str(n), "--labelled", str(args.labelled), "--chunk", str(args.chunk)]
    cmd += ["--seed", str(seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--old", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--labelled", type=int, default=300)
    parser.add_argument("--chunk", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        assert args.root is not None
        result = measure(args.root, args.measure, args.n, args.labelled, args.chunk, args.seed)
        print(json.dumps(result))
        return
    root = Path(tempfile.mkdtemp(prefix="labelloop-rows-"))
    try:
        report: dict[str, Any] = {"rows": args.rows, "old": args.old, "dim": args.dim}
        report["load_before"] = os.getloadavg()
        report.update(build(root, args.rows, args.old, args.dim))
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in range(args.repeats):  # A B A B: the same load for both layouts
            for kind, n in (("rows-labelled", args.rows), ("old-labelled", args.old)):
                runs.setdefault(kind, []).append(run_measure(root, kind, n, args, seed=r))
        for kind, n in (("rows-pool", args.rows), ("old-pool", args.old)):
            runs[kind] = [run_measure(root, kind, n, args, seed=0)]
        report["load_after"] = os.getloadavg()
        report["median"] = {
            kind: {
                key: statistics.median(float(m[key]) for m in ms)
                for key in ("seconds", "anon_mb", "file_mb", "peak_mb", "rss_mb")
            }
            for kind, ms in runs.items()
        }
        report["runs"] = runs
        print(json.dumps(report, indent=1))
        if args.out is not None:
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
