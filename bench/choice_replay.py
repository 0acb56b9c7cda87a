"""Replay the loop's choice of image learner over a stream's first labels, offline.

At each label count where the loop trains (10, then every 10% of growth) the candidates are
cross-validated as a training job does (pixels with the task's pool, the backbone's learners on the
labelled items alone, as before the pool is embedded) and two rules choose: accuracy alone (the
earlier candidate on a tie) and the loop's (:func:`labelloop.learners.choice.pick`: near-ties by
macro F1, then Brier score). It says how often each rule chose each learner, so a change of rule can
be checked on digits (pixels must keep winning) and on photos without streaming through a server.

    python -m bench.choice_replay digits --seeds 0 1 2 --up-to 70
    python -m bench.choice_replay /tmp/natural --limit 1000 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench import datasets
from bench.photos import photo_set
from labelloop.kinds.classification import correct, indicator
from labelloop.learners.base import Features, Learner
from labelloop.learners.choice import folds, out_of_sample, pick
from labelloop.learners.embedding import EmbeddingLogReg, EmbeddingSpread
from labelloop.learners.image import PoolSVM


def training_points(up_to: int) -> list[int]:
    """The label counts where the loop trains: 10, then each time the labels grew by 10%."""
    out = [10]
    while True:
        nxt = max(out[-1] + 1, int(np.ceil(out[-1] * 1.1)))
        if nxt > up_to:
            return out
        out.append(nxt)


def replay(ds: datasets.Dataset, root: Path, seed: int, up_to: int) -> dict[str, Counter[str]]:
    raws = [(Path(p) if Path(p).is_absolute() else root / p).read_bytes() for p in ds.data]
    pixels = PoolSVM(ds.labels)
    head, spread = EmbeddingLogReg(ds.labels), EmbeddingSpread(ds.labels)
    pool = Features({f.view: f.transform(raws) for f in pixels.featurizers()})
    order = np.random.RandomState(seed).permutation(len(raws))[:up_to]
    embedded = Features({f.view: f.transform([raws[i] for i in order]) for f in head.featurizers()})
    tally: dict[str, Counter[str]] = {"accuracy alone": Counter(), "the loop's rule": Counter()}
    for n in training_points(up_to):
        Y = indicator([[ds.truth[i]] for i in order[:n]], ds.labels)
        for fold_seed in (n, n + 1):  # the loop's fold seed is the task's revision
            splits = folds(Y, 5, fold_seed, False)
            cands: list[tuple[Learner, Features, Features | None]] = [
                (pixels, pool.take(order[:n]), pool),
                (head, embedded.take(range(n)), None),
                (spread, embedded.take(range(n)), None),
            ]
            oos = [out_of_sample(c, X, Y, p, 5, fold_seed, splits) for c, X, p in cands]
            acc = [float(correct(o, Y, False).mean()) for o in oos]
            tally["accuracy alone"][cands[int(np.argmax(acc))][0].name] += 1
            tally["the loop's rule"][cands[pick(oos, Y, False)[0]][0].name] += 1
    return tally


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "folder", help="digits, or a folder with one sub-folder of photos per class"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--up-to", type=int, default=70, help="replay the first this many labels")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="labelloop-replay-") as tmp:
        if args.folder == "digits":
            ds, root = datasets.digits(Path(tmp) / "digits"), Path(tmp)
        else:
            ds, root = photo_set(Path(args.folder), args.limit, 0), Path(args.folder)
        for seed in args.seeds:
            out[f"seed {seed}"] = {
                k: dict(v) for k, v in replay(ds, root, seed, args.up_to).items()
            }
            print(seed, json.dumps(out[f"seed {seed}"]), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
