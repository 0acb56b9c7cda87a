"""The auto-labelling loop on digits without a server: the same learner, estimator and choices.

    python -m bench.autolabel_offline --seeds 0 1 2 3 4 5 6 7 8 9 --methods before
    python -m bench.autolabel_offline --seeds 0 1 --methods before --policy '{"audit_share": 0.5}'
    python -m bench.autolabel_offline --seeds 0 1 --methods before --out runs.json \
        --variants '{"before": {}, "start95": {"start_share": 0.95}}'
    python -m bench.autolabel_offline --replay runs.json --start-shares 0.9 0.95 1.0
    python -m bench.autolabel_offline --frozen runs.json --freeze-at 40 80 120
    python -m bench.autolabel_offline --seeds 0 1 --methods before \
        --variants '{"band5x2": {"band_share": 0.05, "band_factor": 2}, "before": {}}'
    python -m bench.autolabel_offline --coverage 0.05 2 --reps 500

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
The variant keys ``band_share`` and ``band_factor`` draw audits with unequal, recorded chances
(the served model's least confident band oversampled) and certify with :func:`banded_threshold`
(``drawn_audits``: uniform audits from the same random stream, its control); ``--coverage``
simulates that estimator's false claims. Measured and dropped (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.stats import binom
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


@functools.lru_cache(maxsize=65536)
def band_p_value(
    n_low: int,
    k_low: int,
    m_high: int,
    k_high: int,
    share: float,
    g_high: float,
    delta: float,
    c: float,
    n_uniform: int = 0,
    k_uniform: int = 0,
) -> float:
    """Largest chance, over the null, that the weighted misses ``c * K_L + K_H`` come out at
    most the observed ones.

    The claim is about the uniform measure on the pool: the error above the threshold is
    ``(share * e_L + (1 - share) * g_H * theta_H) / D`` with ``D >= (1 - share) * g_H`` (the low
    band's items above the threshold dropped from the denominator: conservative). ``e_L`` is the
    chance that a low-band draw is above and wrong (``k_low`` of all ``n_low`` low-band draws, so
    the band's unknown share above the threshold is no nuisance), ``theta_H`` the error of the
    other band above it (``k_high`` of ``m_high``), ``g_H >= g_high`` its share above. Under the
    null (error >= ``delta``) the pair lies on or above the line ``share * e_L = (1 - share) *
    g_high * (delta - theta_H)``; the chance falls in both, so its supremum lies on that line
    (a grid and its ends). ``c``, fixed by the counts, weighs a low-band miss by its draw
    probability against another miss. Uniform draws (before any model: ``k_uniform`` of
    ``n_uniform`` above and wrong) are above and wrong with chance ``share * e_L + (1 - share) *
    g_H * theta_H``, at least ``(1 - share) * g_high * delta`` on that line."""
    observed = c * k_low + k_high + k_uniform
    uniform = binom.pmf(np.arange(n_uniform + 1), n_uniform, (1.0 - share) * g_high * delta)
    top = min(1.0, (1.0 - share) * g_high * delta / share) if n_low else 0.0
    e_low = np.unique(np.concatenate([np.linspace(0.0, top, 201), [0.0, top]]))
    theta = np.clip(delta - share * e_low / ((1.0 - share) * g_high), 0.0, 1.0)
    total = np.zeros(len(e_low))
    for k in range(0, n_low + 1):
        for u in range(0, n_uniform + 1):
            rest = observed - c * k - u
            if rest < -1e-9:
                break
            total += (
                binom.pmf(k, n_low, e_low)
                * uniform[u]
                * binom.cdf(math.floor(rest + 1e-9), m_high, theta)
            )
    return float(total.max())


def banded_threshold(
    conf: np.ndarray,
    correct: np.ndarray,
    low: np.ndarray,
    auto: AutoLabelPolicy,
    target: float,
    share: float,
    uniform: np.ndarray | None = None,
) -> autolabel.ThresholdEstimate:
    """:func:`autolabel.estimate_threshold` for audits drawn with unequal, recorded chances: the
    least confident ``share`` of the pool (by the model served when each was drawn) more often
    than the rest; ``low`` says which audits came from that band, ``uniform`` which were drawn
    uniformly (before any model served).

    Two fixed sequences as there (started from the counts of the other band's audits above each
    threshold, never from their correctness), each test at its share of the risk, 5% of which
    pays for the lower bound on the other band's share above the threshold (``g_H``)."""
    n = len(conf)
    conf_level = auto.confidence
    risk = 1.0 - conf_level
    delta = 1.0 - target
    uniform = np.zeros(n, dtype=bool) if uniform is None else uniform
    high = ~low & ~uniform
    n_low, n_high, n_uniform = int(low.sum()), int(high.sum()), int(uniform.sum())
    # A low-band miss against another: the ratio of their importance weights (share / n_low
    # over (1 - share) / n_high), at most 1.
    c = min(1.0, share * n_high / ((1.0 - share) * n_low)) if n_low else 1.0

    def none(reason: str) -> autolabel.ThresholdEstimate:
        return autolabel.ThresholdEstimate(None, n, 0, None, None, target, conf_level, reason)

    if n < auto.min_labels or n_high == 0:
        return none("too few audits")
    claims = []
    for part, start in ((autolabel.LOW_START_RISK, "low"), (1 - autolabel.LOW_START_RISK, "half")):
        alpha = part * risk
        a_g, a_t = 0.05 * alpha, 0.95 * alpha
        # Starts on the audits above each threshold counted by weight (a low-band one as c):
        # counts only, never correctness.
        weighted = n_high + n_uniform + c * n_low
        if start == "low":
            begin = autolabel.sequence_start(math.floor(weighted), target, 1.0 - a_t)
        else:
            begin = max(autolabel.min_evidence(target, 1.0 - a_t), math.ceil(weighted / 2))
        best: autolabel.ThresholdEstimate | None = None
        for t in autolabel.GRID:
            above = conf >= t
            m_high = int((above & high).sum())
            if m_high + (above & uniform).sum() + c * (above & low).sum() < begin:
                continue
            k_high = int((above & high & ~correct).sum())
            k_low = int((above & low & ~correct).sum())
            k_uniform = int((above & uniform & ~correct).sum())
            g_high = autolabel.clopper_pearson_lower(m_high, n_high, 1.0 - a_g)
            pv = band_p_value(
                n_low,
                k_low,
                m_high,
                k_high,
                share,
                math.floor(g_high * 1e6) / 1e6,
                delta,
                round(c, 6),
                n_uniform,
                k_uniform,
            )
            if pv > a_t:
                break
            best = autolabel.ThresholdEstimate(
                float(t),
                n,
                int(above.sum()),
                float(correct[above].mean()),
                1.0 - pv,
                target,
                conf_level,
                "target met",
            )
        if best is not None:
            claims.append(best)
    if claims:
        return min(claims, key=lambda e: e.threshold or 1.0)
    return none("no threshold shows the target")


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
    #: Audits drawn with unequal chances: the least confident ``band_share`` of the items without
    #: a human label (by the served model) ``band_factor`` times as often as the rest; 0: uniform.
    band_share: float = 0.0
    band_factor: float = 1.0
    rng: np.random.Generator | None = None
    band_of: dict[int, str] = field(default_factory=dict)

    def audit(self, done: set[int]) -> int:
        """The next audit: the seed's random order, or a draw weighted by the served model's
        band, its band recorded (``U``: before any model, uniform)."""
        if self.scores is None or self.rng is None:
            pick = next(i for i in self.order if i not in done)
            self.band_of[pick] = "U"
        else:
            rest = np.array([i for i in range(len(self.truth)) if i not in done])
            conf = self.scores[rest].max(axis=1)
            low = np.zeros(len(rest), dtype=bool)
            low[np.argsort(conf, kind="stable")[: math.ceil(self.band_share * len(rest))]] = True
            weight = np.where(low, self.band_factor, 1.0)
            j = int(self.rng.choice(len(rest), p=weight / weight.sum()))
            pick = int(rest[j])
            self.band_of[pick] = "L" if low[j] else "H"
        self.audits.add(pick)
        return pick

    def pick(self) -> int | None:
        """What ``/next`` would hand out now (None: every item is labelled)."""
        done = set(self.human)
        uncovered = [
            i for i in range(len(self.truth)) if i not in done and i not in self.model_labels
        ]
        if not uncovered:
            return None
        if self.scores is None:
            return self.audit(done)
        top2 = np.sort(self.scores, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        unsure = min(uncovered, key=lambda i: margin[i])
        if self.certified and len(uncovered) <= self.auto.tail:
            return unsure
        if audit_turn_at(len(self.human), self.auto.audit_share):
            return self.audit(done)
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
        bands = np.array([self.band_of[self.human[p]] for p in held])
        if self.band_share > 0:
            est = banded_threshold(
                oos[held].max(axis=1),
                oos[held].argmax(axis=1) == y[held],
                bands == "L",
                self.auto,
                target,
                self.band_share,
                bands == "U",
            )
        else:
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
                "band": "".join(str(b) for b in bands),
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
    extra = dict(extra or {})
    band_share = float(extra.pop("band_share", 0.0))
    band_factor = float(extra.pop("band_factor", 1.0))
    # Audits after the first model drawn from their own stream even when uniform: the control
    # of the banded variants (which draw from it), so draw luck and design come apart.
    drawn = bool(extra.pop("drawn_audits", band_share > 0))
    auto = AutoLabelPolicy(**extra)
    policy = Policy(auto_label=auto)
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(truth))]
    loop = Loop(X, truth, auto, apart, order, band_share=band_share, band_factor=band_factor)
    loop.rng = np.random.default_rng([seed, 15]) if drawn else None
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
        "bands": "".join(loop.band_of.get(i, "-") for i in loop.human),
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


def coverage(reps: int, n: int, share: float, factor: float, seed: int = 0) -> dict[str, float]:
    """False claims of :func:`banded_threshold` on simulated pools (a claim whose threshold's
    true error exceeds the target's): audits drawn i.i.d. with the band's weights from a pool of
    2,000 items whose errors sit in the band, at moderate confidence above it, or everywhere,
    each pool just below 98% right above its lowest threshold."""
    rng = np.random.default_rng(seed)
    auto = AutoLabelPolicy()
    target = auto.target_accuracy
    size = 2000
    conf = np.sort(rng.uniform(0.5, 1.0, size))  # ascending: the first ``share`` are the band
    band = np.arange(size) < math.ceil(share * size)
    places = {
        "band": band,
        "above the band": (np.arange(size) >= math.ceil(share * size))
        & (np.arange(size) < math.ceil(3 * share * size)),
        "everywhere": np.ones(size, dtype=bool),
        "confident": np.arange(size) >= size // 2,
    }
    out = {}
    weight = np.where(band, factor, 1.0)
    prob = weight / weight.sum()
    for name, where in places.items():
        wrong = np.zeros(size, dtype=bool)
        bad = np.flatnonzero(where)
        # 2.1% of the pool wrong, all of it where the scenario puts it.
        wrong[rng.choice(bad, size=min(len(bad), math.ceil(0.021 * size)), replace=False)] = True
        false_claims = claims = 0
        for _ in range(reps):
            drawn = rng.choice(size, size=n, p=prob)
            est = banded_threshold(conf[drawn], ~wrong[drawn], band[drawn], auto, target, share)
            if est.threshold is not None:
                claims += 1
                above = conf >= est.threshold
                false_claims += float(wrong[above].mean()) > 1.0 - target
        out[name] = false_claims / reps
        out[name + " (claims)"] = claims / reps
        print(json.dumps({name: out[name], "claims": claims / reps}), flush=True)
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
    parser.add_argument(
        "--coverage",
        type=float,
        nargs=2,
        metavar=("SHARE", "FACTOR"),
        help="false claims of the banded estimator on simulated pools (--reps, --audits)",
    )
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--audits", type=int, default=200)
    args = parser.parse_args()
    if args.coverage:
        coverage(args.reps, args.audits, args.coverage[0], args.coverage[1])
        return
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
                shown = {
                    k: v for k, v in r.items() if k not in ("history", "picks", "audited", "bands")
                }
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
