"""The auto-labelling loop on digits without a server: the same learner, estimator and choices.

    python -m bench.autolabel_offline --seeds 0 1 2 3 4 5 6 7 8 9 --methods before
    python -m bench.autolabel_offline --seeds 0 1 --methods before --policy '{"audit_share": 0.5}'

Each seed is run twice on the same random order: ``before`` (audits scored by the task's 5-fold
cross-validation) and ``after`` (audits scored apart, ``autolabel.audit_scores``). It mirrors what
``python -m bench.active auto digits`` measures through a server — the annotator labels whatever
would be handed out next (before the first model: the random order; then random audits,
uniformly random items without a human label, at the policy's ``audit_share`` (four for every
item the served model is least sure of by margin, by default);
once certified with at most ``tail`` items uncovered, those by margin), a training at the policy's
growth and ``evidence_step``, ``pool-svm`` on 16x16 pixels, model labels re-derived at every
training from its certified threshold — without the promotion gate, the store and the HTTP round
trips, so a pair of runs costs about a minute of CPU instead of ten (and needs no worker start on a
loaded machine). The order comes from ``numpy`` (seed), not from the server's item hashes, so a
seed here is not the same run as the seed of ``bench.active``. ``--policy`` overrides the
``auto_label`` policy; ``--out`` keeps each training's estimate and its audits' scores
(``history``), which is what shows where a run's labels went.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from labelloop.learners.base import Features
from labelloop.learners.choice import out_of_sample
from labelloop.learners.image import PoolSVM
from labelloop.loop import autolabel
from labelloop.loop.policy import AutoLabelPolicy, Policy
from labelloop.loop.selection import audit_turn_at

LABELS = [str(d) for d in range(10)]


def digits() -> tuple[Features, np.ndarray]:
    """The digits as ``pool-svm`` reads them (the PNGs of ``bench.datasets``, 16x16 bilinear)."""
    d = load_digits()
    rows = []
    for image in d.images:
        pixels = np.clip(np.round(image * 255.0 / 16.0), 0, 255).astype(np.uint8)
        grey = Image.fromarray(pixels, mode="L").resize((16, 16), Image.Resampling.BILINEAR)
        rows.append(np.asarray(grey, dtype=np.float32).ravel() / 255.0)
    return Features({"pixels": np.vstack(rows)}), d.target


@dataclass
class Loop:
    """One simulated task: who labelled what, and what the served model says."""

    X: Features
    truth: np.ndarray
    auto: AutoLabelPolicy
    apart: bool
    order: list[int]
    human: list[int] = field(default_factory=list)
    audits: set[int] = field(default_factory=set)
    model_labels: dict[int, int] = field(default_factory=dict)
    scores: np.ndarray | None = None
    certified: bool = False
    version: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def pick(self) -> int | None:
        """What ``/next`` would hand out now (None: every item is labelled)."""
        done = set(self.human)
        uncovered = [
            i for i in range(len(self.truth)) if i not in done and i not in self.model_labels
        ]
        if not uncovered:
            return None
        if self.scores is None:
            pick = next(i for i in self.order if i not in done)
            self.audits.add(pick)
            return pick
        top2 = np.sort(self.scores, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        unsure = min(uncovered, key=lambda i: margin[i])
        if self.certified and len(uncovered) <= self.auto.tail:
            return unsure
        if audit_turn_at(len(self.human), self.auto.audit_share):
            pick = next(i for i in self.order if i not in done)
            self.audits.add(pick)
            return pick
        return unsure

    def train(self) -> None:
        """Fit, score the audits (cross-validated or apart), certify, re-derive model labels."""
        self.version += 1
        y = self.truth[self.human]
        Y = np.eye(len(LABELS))[y]
        X = self.X.take(self.human)
        oos = out_of_sample(PoolSVM(LABELS), X, Y, self.X, 5, self.version)
        model = PoolSVM(LABELS).fit(X, Y, pool=self.X)
        self.scores = model.predict_proba(self.X)
        held = [p for p, i in enumerate(self.human) if i in self.audits]
        if self.apart:
            apart = autolabel.audit_scores(PoolSVM(LABELS), X, Y, held, self.X, 5, self.version)
            if apart is not None:
                oos[held] = apart
        target = autolabel.model_label_target(self.auto, len(self.truth), len(self.human))
        est = autolabel.estimate_threshold(
            oos[held].max(axis=1), oos[held].argmax(axis=1) == y[held], self.auto, target
        )
        self.certified = est.threshold is not None
        wrong = oos[held].argmax(axis=1) != y[held]
        self.history.append(
            {
                "labels": len(self.human),
                "audits": len(held),
                "threshold": est.threshold,
                "above": est.above,
                "misses_at": sorted(round(float(c), 3) for c in oos[held].max(axis=1)[wrong]),
                "uncovered": 0,
                "conf": [round(float(c), 4) for c in oos[held].max(axis=1)],
                "wrong": [int(w) for w in wrong],
            }
        )
        self.model_labels = {}
        if est.threshold is not None:
            done = set(self.human)
            conf, label = self.scores.max(axis=1), self.scores.argmax(axis=1)
            self.model_labels = {
                i: int(label[i])
                for i in range(len(self.truth))
                if i not in done and conf[i] >= est.threshold
            }
        self.history[-1]["uncovered"] = len(self.truth) - len(self.human) - len(self.model_labels)


def run(
    X: Features, truth: np.ndarray, seed: int, apart: bool, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    auto = AutoLabelPolicy(**(extra or {}))
    policy = Policy(auto_label=auto)
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(truth))]
    loop = Loop(X, truth, auto, apart, order)
    need = autolabel.min_evidence(auto.target_accuracy, auto.confidence)
    last: int | None = None
    audits_last: int | None = None
    while (pick := loop.pick()) is not None:
        loop.human.append(pick)
        loop.model_labels.pop(pick, None)
        n, n_audits = len(loop.human), len(loop.audits & set(loop.human))
        classes = len(set(truth[loop.human].tolist()))
        if policy.training_due(n, classes, last) or (
            loop.scores is not None and auto.evidence_due(n_audits, audits_last, need)
        ):
            last, audits_last = n, n_audits
            loop.train()
    right = [loop.model_labels[i] == truth[i] for i in loop.model_labels]
    return {
        "seed": seed,
        "method": "after" if apart else "before",
        "human_labels": len(loop.human),
        "human_share": len(loop.human) / len(truth),
        "audits": len(loop.audits),
        "final_accuracy": (len(loop.human) + sum(right)) / len(truth),
        "model_label_accuracy": float(np.mean(right)) if right else 1.0,
        "history": loop.history,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["after", "before"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--policy", type=json.loads, default={}, help="auto_label policy, JSON")
    args = parser.parse_args()
    X, truth = digits()
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            r = run(X, truth, seed, method == "after", args.policy)
            runs.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "history"}), flush=True)
    summary: dict[str, Any] = {"runs": runs}
    for method in args.methods:
        shares = [r["human_share"] for r in runs if r["method"] == method]
        summary[method] = {
            "median": statistics.median(shares),
            "mean": statistics.mean(shares),
            "worst": max(shares),
            "runs_at_most_15%": sum(s <= 0.15 for s in shares),
            "lowest_final_accuracy": min(
                r["final_accuracy"] for r in runs if r["method"] == method
            ),
        }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
