"""Scoring learners out of sample, and choosing a task's learner by those scores.

Every label is predicted by a model that did not see it (k-fold cross-validation); those
out-of-sample scores are the evidence for everything after training: the promotion test, the
auto-labelling threshold, label-error flags, and here the choice of learner. The candidates share
the task's cached features, so choosing costs k fits per candidate and no featurizing.

A costly candidate (``holdout_only``, the fine-tuned backbone) is not cross-validated k times: it is
fitted once on every fold but the first and scored on the first fold, against what the other
candidates' out-of-sample scores say on the very same items (each of those came from a model fitted
on the same other folds, so the comparison is paired and fair). Only if it wins there are its
scores on the remaining folds computed, so a version always carries out-of-sample scores of the
learner it holds for every label.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from labelloop.kinds.base import Scores, TaskKind
from labelloop.kinds.classification import correct, score
from labelloop.kinds.registry import kind_for
from labelloop.learners.base import Features, Learner

__all__ = ["Choice", "Scores", "choose", "correct", "folds", "out_of_sample", "score"]

Split = tuple[np.ndarray, np.ndarray]


def folds(Y: np.ndarray, k: int, seed: int, multi_label: bool) -> list[Split]:
    """k folds, stratified by class when every class has k labels (a score matrix of one label
    per item); plain k folds otherwise (label sets, text spans)."""
    n = len(Y)
    k = max(2, min(k, n))
    if not multi_label and Y.ndim == 2:
        y = Y.argmax(axis=1)
        counts = np.bincount(y)
        if counts[counts > 0].min() >= k:
            return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), y))
    return list(KFold(k, shuffle=True, random_state=seed).split(np.zeros(n)))


def out_of_sample(
    learner: Learner,
    X: Features,
    Y: np.ndarray,
    pool: Features | None,
    k: int,
    seed: int,
    splits: Sequence[Split] | None = None,
) -> np.ndarray:
    """Answers for every labelled item from a model trained without it (k-fold): scores, or the
    kind's answer objects (an object array) for learners that answer objects."""
    proba: np.ndarray | None = None
    for train, test in splits if splits is not None else folds(Y, k, seed, learner.multi_label):
        model = learner.clone().fit(X.take(train), Y[train], pool=pool)
        part = model.predict_proba(X.take(test))
        if proba is None:
            dtype = object if part.dtype == object else np.float64
            proba = np.zeros((len(Y), *part.shape[1:]), dtype=dtype)
        proba[test] = part
    return np.zeros(Y.shape, dtype=np.float64) if proba is None else proba


def _merit(kind: TaskKind, answers: np.ndarray, Y: np.ndarray) -> float:
    """What candidates are compared by: the kind's promotion score (accuracy, entity F1)."""
    return kind.promotion_score(kind.score(answers, Y))


@dataclass
class Choice:
    """The learner that won, its out-of-sample scores, and every candidate's evidence."""

    learner: Learner
    oos: np.ndarray
    #: Candidate name -> accuracy, macro F1, items it was scored on, seconds it took.
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""


def choose(
    candidates: Sequence[Learner],
    X: Features,
    Y: np.ndarray,
    pool: Features | None,
    k: int,
    seed: int,
    kind: TaskKind | None = None,
) -> Choice:
    """The candidate with the best cross-validated promotion score of the task's ``kind``
    (accuracy; entity F1 for text spans; ties: the earlier one). Without ``kind``: classification.

    Each candidate sees only its own views of ``X`` and ``pool``.
    """
    if not candidates:
        raise ValueError("no candidate learner")
    multi = candidates[0].multi_label
    if kind is None:
        kind = kind_for("text-classification", "multi-label" if multi else "multi-class")
    splits = folds(Y, k, seed, multi)
    evidence: dict[str, dict[str, Any]] = {}
    scored: list[tuple[Learner, np.ndarray]] = []
    holdout: list[Learner] = []
    for cand in candidates:
        if getattr(cand, "holdout_only", False) and len(candidates) > 1:
            holdout.append(cand)
            continue
        started = time.perf_counter()
        views = cand.views()
        oos = out_of_sample(cand, X.only(views), Y, _only(pool, views), k, seed, splits)
        s = kind.score(oos, Y)
        evidence[cand.name] = _evidence(s, time.perf_counter() - started, "k-fold")
        scored.append((cand, oos))
    best, best_oos = max(scored, key=lambda c: (_merit(kind, c[1], Y), -scored.index(c)))
    reason = _reason(best.name, evidence)
    for cand in holdout:
        started = time.perf_counter()
        views = cand.views()
        Xc, poolc = X.only(views), _only(pool, views)
        train, test = splits[0]
        first = cand.clone().fit(Xc.take(train), Y[train], pool=poolc).predict_proba(Xc.take(test))
        mine = _merit(kind, first, Y[test])
        theirs = _merit(kind, best_oos[test], Y[test])
        evidence[cand.name] = {
            **_evidence(kind.score(first, Y[test]), time.perf_counter() - started, "one fold"),
            "against": {best.name: round(theirs, 6)},
        }
        if mine > theirs:
            oos = out_of_sample(cand, Xc, Y, poolc, k, seed, splits[1:])
            oos[test] = first
            s = kind.score(oos, Y)
            evidence[cand.name] = {
                **_evidence(s, time.perf_counter() - started, "k-fold"),
                "first_fold_accuracy": round(mine, 6),
                "against": {best.name: round(theirs, 6)},
            }
            reason = (
                f"{cand.name} beat {best.name} on the first fold ({mine:.3f} against "
                f"{theirs:.3f} on {len(test)} labels, both fitted on the other folds); "
                f"cross-validated accuracy {s.accuracy:.3f}"
            )
            best, best_oos = cand, oos
    return Choice(best, best_oos, evidence, reason)


def _only(pool: Features | None, views: Sequence[str]) -> Features | None:
    """The pool's views for a candidate; None when the pool lacks one of them (a candidate scored
    on the labelled items alone, whose pool has not been featurized for it)."""
    if pool is None or any(v not in pool.views for v in views):
        return None
    return pool.only(views)


def _evidence(s: Scores, seconds: float, how: str) -> dict[str, Any]:
    return {
        "cv_accuracy": round(s.accuracy, 6),
        "cv_macro_f1": round(s.macro_f1, 6),
        **{f"cv_{k}": v for k, v in s.details.items()},
        "scored_on": s.n,
        "evaluation": how,
        "seconds": round(seconds, 3),
    }


def _reason(name: str, evidence: dict[str, dict[str, Any]]) -> str:
    if len(evidence) == 1:
        return f"{name} is the only candidate"
    others = ", ".join(f"{n} {e['cv_accuracy']:.3f}" for n, e in evidence.items() if n != name)
    return (
        f"{name} has the highest cross-validated accuracy on this task's labels "
        f"({evidence[name]['cv_accuracy']:.3f}; {others})"
    )
