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

from labelloop.kinds.base import TaskKind
from labelloop.learners.choice import Scores, correct, folds, out_of_sample, score

__all__ = [
    "Decision",
    "Scores",
    "compare",
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
    #: Both models' promotion scores there (the kind's: entity F1 for text spans); None for
    #: kinds promoted on accuracy, which the counts above already say.
    candidate_score: float | None = None
    served_score: float | None = None


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


def compare(
    kind: TaskKind, candidate: np.ndarray, served: np.ndarray, Y: np.ndarray, confidence: float
) -> Decision:
    """:func:`should_promote` for any kind, on the same newer labels: a sign test on the items
    where one model makes fewer mistakes (:meth:`~labelloop.kinds.base.TaskKind.errors`: a wrong
    label set; for text spans, spans wrongly proposed or missed). The served model keeps its place
    only when the test says it is better *and* its promotion score there (accuracy; entity F1)
    is higher, so a text-spans version is gated on entity F1."""
    if kind.promotion_metric == "accuracy":
        return should_promote(kind.correct(candidate, Y), kind.correct(served, Y), confidence)
    n = len(Y)
    if n == 0:
        return Decision(True, "no labels newer than the served model to compare on")
    cand_err, served_err = kind.errors(candidate, Y), kind.errors(served, Y)
    only_served, only_cand = int((served_err < cand_err).sum()), int((cand_err < served_err).sum())
    c_score = kind.promotion_score(kind.score(candidate, Y))
    s_score = kind.promotion_score(kind.score(served, Y))
    from scipy.stats import binomtest

    discordant = only_served + only_cand
    p = 1.0 if discordant == 0 else binomtest(only_served, discordant, 0.5, "greater").pvalue
    worse = p < 1.0 - confidence and s_score > c_score
    verdict = "served model is better" if worse else "candidate is not worse"
    reason = (
        f"{verdict} on {n} newer labels: {kind.promotion_metric} candidate {c_score:.3f}, "
        f"served {s_score:.3f}; fewer mistakes on {only_cand} items for the candidate, "
        f"{only_served} for the served model (sign test p={p:.3g})"
    )
    cand_ok, served_ok = kind.correct(candidate, Y), kind.correct(served, Y)
    return Decision(
        not worse,
        reason,
        n,
        int(cand_ok.sum()),
        int(served_ok.sum()),
        round(c_score, 6),
        round(s_score, 6),
    )
