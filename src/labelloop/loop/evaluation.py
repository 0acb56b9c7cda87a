"""Scoring candidates out of sample, and comparing them with the served model without bias.

A candidate is scored by k-fold cross-validation on the labels of its revision: every label is
predicted by a model that did not see it. It is compared with the served model on the labels that
arrived after the served model was trained (which the served model never saw either): the same
items, both answers out of sample, a paired test. So no labels are withheld from training, and the
promoted model is fitted on all of them. Out-of-sample scores are kept with the version: they feed
auto-labelling thresholds and label-error flags too. Cross-validation itself, and the choice of a
task's learner by it, live in :mod:`labelloop.learners.choice`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from labelloop.learners.choice import Scores, correct, folds, out_of_sample, score

__all__ = [
    "Decision",
    "Scores",
    "correct",
    "folds",
    "out_of_sample",
    "score",
    "should_promote",
    "wilson_lower",
]


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
