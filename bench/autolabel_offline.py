"""The auto-labelling loop on digits without a server: the same learner, estimator and choices.

    python -m bench.autolabel_offline --seeds 0 1 2 3 4 5 6 7 8 9 --methods before
    python -m bench.autolabel_offline --seeds 0 1 --methods before --policy '{"audit_share": 0.5}'
    python -m bench.autolabel_offline --seeds 0 1 --methods before --out runs.json \
        --variants '{"before": {}, "start95": {"start_share": 0.95}}'
    python -m bench.autolabel_offline --replay runs.json --start-shares 0.9 0.95 1.0
    python -m bench.autolabel_offline --frozen runs.json --freeze-at 40 80 120

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
(``history``) and its picks, which is what shows where a run's labels went; ``--variants`` runs
several policies on each seed in turn; every run reports the *floor* any valid claim needs at its
final model's error rate (:func:`floor_audits`); ``--replay`` and ``--frozen`` screen kept runs.
"""

from __future__ import annotations

import argparse
import json
import math
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
            folds = self.auto.audit_folds or 5
            apart = autolabel.audit_scores(PoolSVM(LABELS), X, Y, held, self.X, folds, self.version)
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
    accuracy = float(np.mean(right)) if right else 1.0
    return {
        "seed": seed,
        "method": "after" if apart else "before",
        "human_labels": len(loop.human),
        "human_share": len(loop.human) / len(truth),
        "audits": len(loop.audits),
        "final_accuracy": (len(loop.human) + sum(right)) / len(truth),
        "model_label_accuracy": accuracy,
        "floor": floor_audits(
            1.0 - accuracy, auto.target_accuracy, auto.confidence, round(0.15 * len(truth))
        ),
        "floor_region": floor_region(loop, auto),
        "history": loop.history,
        "picks": loop.human,
        "audited": [int(i in loop.audits) for i in loop.human],
    }


def floor_audits(
    error: float, target: float, confidence: float, beyond: int = 0, limit: int = 3000
) -> tuple[float, float]:
    """What *any* claim at ``target`` needs in audits, were they scored by the run's final model
    itself (its true error rate on the items it labelled, ``error``) and every one of them drawn
    from its claim: audit after audit, a claim waits until ``n`` audits with ``m`` misses reach
    :func:`autolabel.evidence_for` ``(m)`` (149 with none, 236 with one, ... at 98% and 95%:
    the exact binomial bound, the least any valid test at a fixed size needs). Returns the
    expected audits and the probability that more than ``beyond`` are needed; (inf, 1) when a
    claim may (more than once in a million) take more than ``limit`` audits or 60 misses."""
    need = [autolabel.evidence_for(0, target, confidence)]
    while len(need) < 60:  # evidence_for, each count from the one before
        m, n = len(need), need[-1] + 1
        while autolabel.clopper_pearson_lower(n - m, n, confidence) < target:
            n += 1
        need.append(n)
    reached: dict[int, list[int]] = {}
    for m, at in enumerate(need):
        reached.setdefault(at, []).append(m)
    waiting = np.zeros(len(need) + 1)  # P(m misses so far and no claim yet); the last: more
    waiting[0] = 1.0
    expected, over = 0.0, 1.0
    for n in range(1, limit + 1):
        more = waiting[-1] + waiting[-2] * error
        waiting[1:] = waiting[1:] * (1.0 - error) + waiting[:-1] * error
        waiting[0] *= 1.0 - error
        waiting[-1] = more
        for m in reached.get(n, ()):  # counts of misses whose evidence ``n`` audits reach
            expected += n * waiting[m]
            over -= waiting[m] if n <= beyond else 0.0
            waiting[m] = 0.0
        if waiting[:-1].sum() < 1e-12:
            break
    if waiting.sum() > 1e-6:
        return math.inf, 1.0
    return expected, max(over, 0.0)


def floor_region(loop: Loop, auto: AutoLabelPolicy) -> tuple[float, float]:
    """:func:`floor_audits` at the best region an oracle could claim: the final model's items
    without a human label above a threshold, its true error rate there, plus the items below
    it, which people would label (scaled to the whole data set). Returns the expected labels
    and the threshold."""
    if loop.scores is None:
        return math.inf, 1.0
    rest = np.setdiff1d(np.arange(len(loop.truth)), loop.human)
    conf = loop.scores[rest].max(axis=1)
    right = loop.scores[rest].argmax(axis=1) == loop.truth[rest]
    best = (math.inf, 1.0)
    for t in np.arange(0.5, 1.0, 0.01):
        above = conf >= t
        if not above.any():
            continue
        error = 1.0 - float(right[above].mean())
        audits, _ = floor_audits(error, auto.target_accuracy, auto.confidence)
        below = (1.0 - float(above.mean())) * len(loop.truth)
        best = min(best, (audits + below, round(float(t), 2)))
    return best


def replay(path: Path, start_shares: list[float], items: int) -> list[dict[str, Any]]:
    """Screening without fitting: each training of each run kept in ``path`` (``--out``) is
    estimated again from its audits' stored scores at every ``start_shares`` value, and the run
    is said to end at the first training whose claim leaves at most ``tail`` items uncovered
    (uncovered items estimated from the share of audits below the threshold), plus those items.
    Ignores what an earlier claim would have changed in the picks; None: the run kept no
    training that late."""
    out = []
    default_start = autolabel.START_SHARE
    for r in json.loads(path.read_text())["runs"]:
        auto = AutoLabelPolicy()
        row: dict[str, Any] = {
            "seed": r["seed"],
            "variant": r.get("variant", ""),
            "actual": r["human_labels"],
        }
        for share in start_shares:
            autolabel.START_SHARE = share
            row[str(share)] = None
            for h in r["history"]:
                conf = np.asarray(h["conf"])
                right = np.asarray(h["wrong"]) == 0
                if len(conf) == 0:
                    continue
                est = autolabel.estimate_threshold(conf, right, auto)
                if est.threshold is None:
                    continue
                left = round((1 - est.above / len(conf)) * (items - h["labels"]))
                if left <= auto.tail:
                    row[str(share)] = h["labels"] + left
                    break
        out.append(row)
    autolabel.START_SHARE = default_start
    return out


def frozen(
    path: Path, freeze_at: list[int], X: Features, truth: np.ndarray
) -> list[dict[str, Any]]:
    """The frozen-version alternative, screened on the runs kept in ``path``: the version trained
    on a run's first ``n`` labels labels the pool for good, and every later label is an audit of
    it (the seed's random order), scored by that very version, never trained on them: held out
    exactly, no cross-validation. It is estimated every ``evidence_step`` audits from the 149
    that could show the target (as a task's trainings look); the run would end at the first
    claim leaving at most ``tail`` items uncovered, plus those. None: not within 1,000 audits."""
    out = []
    for r in json.loads(path.read_text())["runs"]:
        auto = AutoLabelPolicy()
        order = [int(i) for i in np.random.default_rng(r["seed"]).permutation(len(truth))]
        row: dict[str, Any] = {"seed": r["seed"], "actual": r["human_labels"]}
        for n in freeze_at:
            first = r["picks"][:n]
            model = PoolSVM(LABELS).fit(X.take(first), np.eye(len(LABELS))[truth[first]], pool=X)
            scores = model.predict_proba(X)
            conf, label = scores.max(axis=1), scores.argmax(axis=1)
            taken = set(first)
            stream = [i for i in order if i not in taken][:1000]
            need = autolabel.min_evidence(auto.target_accuracy, auto.confidence)
            row[str(n)] = None
            for k in range(need, len(stream) + 1, auto.evidence_step or 1):
                audits = stream[:k]
                est = autolabel.estimate_threshold(
                    conf[audits], label[audits] == truth[audits], auto
                )
                if est.threshold is None:
                    continue
                done = taken | set(audits)
                left = sum(
                    1 for i in range(len(truth)) if i not in done and conf[i] < est.threshold
                )
                if left <= auto.tail:
                    row[str(n)] = n + k + left
                    break
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["after", "before"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--policy", type=json.loads, default={}, help="auto_label policy, JSON")
    parser.add_argument(
        "--variants",
        type=json.loads,
        default={"": {}},
        help="name -> auto_label policy overrides (JSON), each run on every seed after the "
        "other, so that they compare under the same load; the key start_share sets "
        "autolabel.START_SHARE for that variant",
    )
    parser.add_argument("--replay", type=Path, help="an --out file to screen start shares on")
    parser.add_argument("--start-shares", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--frozen", type=Path, help="an --out file to screen frozen versions on")
    parser.add_argument("--freeze-at", type=int, nargs="+", default=[40, 80, 120])
    args = parser.parse_args()
    if args.frozen:
        X, truth = digits()
        frozen(args.frozen, args.freeze_at, X, truth)
        return
    if args.replay:
        for row in replay(args.replay, args.start_shares, len(load_digits().target)):
            print(json.dumps(row))
        return
    X, truth = digits()
    runs = []
    default_start = autolabel.START_SHARE
    for seed in args.seeds:
        for name, overrides in args.variants.items():
            extra = {**args.policy, **overrides}
            autolabel.START_SHARE = float(extra.pop("start_share", default_start))
            for method in args.methods:
                r = {"variant": name, **run(X, truth, seed, method == "after", extra)}
                runs.append(r)
                shown = {k: v for k, v in r.items() if k not in ("history", "picks", "audited")}
                print(json.dumps(shown), flush=True)
                if args.out:  # kept as it goes: a run stopped early keeps what it measured
                    args.out.write_text(json.dumps({"runs": runs}))
    autolabel.START_SHARE = default_start
    summary: dict[str, Any] = {"runs": runs}
    for name in args.variants:
        for method in args.methods:
            mine = [r for r in runs if r["method"] == method and r["variant"] == name]
            shares = [r["human_share"] for r in mine]
            summary[f"{name}:{method}" if name else method] = {
                "median": statistics.median(shares),
                "mean": statistics.mean(shares),
                "worst": max(shares),
                "runs_at_most_15%": sum(s <= 0.15 for s in shares),
                "lowest_final_accuracy": min(r["final_accuracy"] for r in mine),
                # What the audits alone would cost at the runs' own final error rates (a floor).
                "floor_mean_share": statistics.mean(r["floor"][0] for r in mine) / len(truth),
                "floor_runs_over_15%": sum(r["floor"][1] for r in mine),
                "floor_region_mean_share": statistics.mean(r["floor_region"][0] for r in mine)
                / len(truth),
            }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
