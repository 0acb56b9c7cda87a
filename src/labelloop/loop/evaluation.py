"""Scoring candidates out of sample, and comparing them with the served model without bias.

A candidate is scored by k-fold cross-validation on the labels of its revision: every label is
predicted by a model that did not see it. It is compared with the served model on the labels that
arrived after the served model was trained (which the served model never saw either): the same
items, both answers out of sample, a paired test. So no labels are withheld from training, and the
promoted model is fitted on all of them. Out-of-sample scores are kept with the version: they feed
auto-labelling thresholds and label-error flags too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import KFold, StratifiedKFold

from labelloop.learners.base import Features, Learner


def folds(
    Y: np.ndarray, k: int, seed: int, multi_label: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    n = len(Y)
    k = max(2, min(k, n))
    if not multi_label:
        y = Y.argmax(axis=1)
        counts = np.bincount(y)
        if counts[counts > 0].min() >= k:
            return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), y))
    return list(KFold(k, shuffle=True, random_state=seed).split(np.zeros(n)))


def out_of_sample(
    learner: Learner, X: Features, Y: np.ndarray, pool: Features | None, k: int, seed: int
) -> np.ndarray:
    """Scores for every labelled item from a model trained without it (k-fold)."""
    proba = np.zeros(Y.shape, dtype=np.float64)
    for train, test in folds(Y, k, seed, learner.multi_label):
        model = learner.clone().fit(X.take(train), Y[train], pool=pool)
        proba[test] = model.predict_proba(X.take(test))
    return proba


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    n: int


def score(proba: np.ndarray, Y: np.ndarray, multi_label: bool) -> Scores:
    if len(Y) == 0:
        return Scores(0.0, 0.0, 0)
    if multi_label:
        pred = (proba >= 0.5).astype(int)
        acc = float((pred == Y).all(axis=1).mean())
        f1 = float(f1_score(Y, pred, average="macro", zero_division=0))
    else:
        y, p = Y.argmax(axis=1), proba.argmax(axis=1)
        acc = float((y == p).mean())
        f1 = float(f1_score(y, p, average="macro", labels=np.unique(y), zero_division=0))
    return Scores(acc, f1, len(Y))


def wilson_lower(successes: float, n: int, confidence: float = 0.95) -> float:
    """One-sided Wilson lower bound on a proportion: small samples get a low bound, not a guess."""
    if n <= 0:
        return 0.0
    from scipy.stats import norm

    z = float(norm.ppf(confidence))
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def correct(proba: np.ndarray, Y: np.ndarray, multi_label: bool) -> np.ndarray:
    """Per item: did the proposed label set equal the true one."""
    if multi_label:
        return ((proba >= 0.5).astype(int) == Y).all(axis=1)  # type: ignore[no-any-return]
    return proba.argmax(axis=1) == Y.argmax(axis=1)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    #: Items both models were compared on, and how often each was right there.
    n: int = 0
    candidate_correct: int = 0
    served_correct: int = 0


def should_promote(candidate_ok: np.ndarray, served_ok: np.ndarray, confidence: float) -> Decision:
    """Paired comparison on the labels that arrived after the served model was trained.

    Neither model saw these labels (the candidate's answers come from cross-validation), so the
    comparison is unbiased and on the same items. The candidate is kept out only when the served
    model is better with the given confidence (one-sided sign test on the items where they differ);
    a handful of new labels can never block a candidate trained on more data.
    """
    n = len(candidate_ok)
    cand, served = int(candidate_ok.sum()), int(served_ok.sum())
    if n == 0:
        return Decision(True, "no labels newer than the served model to compare on")
    only_served = int((served_ok & ~candidate_ok).sum())
    only_cand = int((candidate_ok & ~served_ok).sum())
    from scipy.stats import binomtest

    discordant = only_served + only_cand
    p = 1.0 if discordant == 0 else binomtest(only_served, discordant, 0.5, "greater").pvalue
    worse = p < 1.0 - confidence
    verdict = "served model is better" if worse else "candidate is not worse"
    reason = (
        f"{verdict} on {n} newer labels: candidate {cand}/{n}, served {served}/{n} "
        f"(sign test p={p:.3g})"
    )
    return Decision(not worse, reason, n, cand, served)
