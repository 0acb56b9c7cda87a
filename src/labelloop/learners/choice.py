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

Accuracy is what people's edits count, so it decides; but over a handful of labels it moves in
steps of one label and two candidates often tie or differ by one item (at a task's first model,
10 labels, 0.6 against 0.6). Such near-ties — an accuracy difference within one standard error of
the paired difference, counted on the items where exactly one of the two is right — go to the
higher macro F1 of the same out-of-sample scores, then to the lower Brier score. Macro F1 weighs
every class alike: with a few labels a candidate can match another's accuracy by answering the
commonest classes only (label spreading over grey pixels of photos does), and a new task needs
every class pre-labelled. The Brier score, a proper score, then separates candidates by how sure
they were of the true label. A clear accuracy difference is never overruled.
"""

from __future__ import annotations

import math
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

__all__ = [
    "Choice",
    "Scores",
    "brier",
    "choose",
    "correct",
    "folds",
    "near_tie",
    "out_of_sample",
    "pick",
    "score",
]

#: Accuracy differences within this many standard errors of the paired difference are near-ties.
NEAR_TIE_Z = 1.0

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
    #: Candidate name -> accuracy, macro F1, Brier score, items it was scored on, seconds it took.
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""


def brier(proba: np.ndarray, Y: np.ndarray) -> float:
    """Mean over items of the squared distance between the scores and the true label set (lower
    is better): unlike accuracy it counts how sure a candidate was, right or wrong."""
    if len(Y) == 0:
        return 0.0
    return float(((proba - Y) ** 2).sum(axis=1).mean())


def near_tie(best: np.ndarray, other: np.ndarray) -> bool:
    """Is ``other``'s accuracy within noise of ``best``'s? ``best`` and ``other`` say per item
    whether each was right. Only the items where exactly one of them is right tell them apart;
    ``best`` leads by the difference of those counts, whose standard error (the sign test's) is
    the square root of their sum."""
    only_best = int(np.sum(best & ~other))
    only_other = int(np.sum(other & ~best))
    return only_best - only_other <= NEAR_TIE_Z * math.sqrt(only_best + only_other)


def pick(oos: Sequence[np.ndarray], Y: np.ndarray, multi_label: bool) -> tuple[int, list[int]]:
    """The winning candidate's index, given each one's out-of-sample scores: the best accuracy;
    among the candidates in a near-tie with it (:func:`near_tie`), the highest macro F1, then the
    lowest Brier score, then the earlier candidate (the cheaper). Also the indices of those
    near-tied candidates."""
    if not oos:
        raise ValueError("no candidate scores")
    right = [correct(p, Y, multi_label) for p in oos]
    top = max(range(len(oos)), key=lambda i: (float(right[i].mean()), -i))
    tied = [i for i in range(len(oos)) if near_tie(right[top], right[i])]
    f1 = {i: round(score(oos[i], Y, multi_label).macro_f1, 9) for i in tied}
    return min(tied, key=lambda i: (-f1[i], brier(oos[i], Y), i)), tied


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
    (accuracy; entity F1 for text spans). Without ``kind``: classification. For scores that are
    probabilities, near-ties go to the highest macro F1, then the lowest Brier score (see
    :func:`pick`); otherwise ties go to the earlier candidate.

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
        evidence[cand.name] = _evidence(s, _brier(oos, Y), time.perf_counter() - started, "k-fold")
        scored.append((cand, oos))
    if all(_probabilistic(o) for _, o in scored):
        won, tied = pick([o for _, o in scored], Y, multi)
    else:
        won = max(range(len(scored)), key=lambda i: (_merit(kind, scored[i][1], Y), -i))
        tied = [won]
    best, best_oos = scored[won]
    reason = _reason(best.name, [scored[i][0].name for i in tied], evidence)
    for cand in holdout:
        started = time.perf_counter()
        views = cand.views()
        Xc, poolc = X.only(views), _only(pool, views)
        train, test = splits[0]
        first = cand.clone().fit(Xc.take(train), Y[train], pool=poolc).predict_proba(Xc.take(test))
        mine = _merit(kind, first, Y[test])
        theirs = _merit(kind, best_oos[test], Y[test])
        evidence[cand.name] = {
            **_evidence(
                kind.score(first, Y[test]),
                _brier(first, Y[test]),
                time.perf_counter() - started,
                "one fold",
            ),
            "against": {best.name: round(theirs, 6)},
        }
        if mine > theirs:
            oos = out_of_sample(cand, Xc, Y, poolc, k, seed, splits[1:])
            oos[test] = first
            s = kind.score(oos, Y)
            evidence[cand.name] = {
                **_evidence(s, _brier(oos, Y), time.perf_counter() - started, "k-fold"),
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


def _probabilistic(answers: np.ndarray) -> bool:
    """Are a candidate's answers per-class probabilities (not structured answers like spans)?"""
    return answers.dtype != object


def _brier(answers: np.ndarray, Y: np.ndarray) -> float | None:
    return brier(answers, Y) if _probabilistic(answers) else None


def _evidence(s: Scores, brier_score: float | None, seconds: float, how: str) -> dict[str, Any]:
    return {
        "cv_accuracy": round(s.accuracy, 6),
        "cv_macro_f1": round(s.macro_f1, 6),
        **({"cv_brier": round(brier_score, 6)} if brier_score is not None else {}),
        **{f"cv_{k}": v for k, v in s.details.items()},
        "scored_on": s.n,
        "evaluation": how,
        "seconds": round(seconds, 3),
    }


def _reason(name: str, tied: list[str], evidence: dict[str, dict[str, Any]]) -> str:
    if len(evidence) == 1:
        return f"{name} is the only candidate"
    mine = evidence[name]
    others = ", ".join(f"{n} {e['cv_accuracy']:.3f}" for n, e in evidence.items() if n != name)
    rivals = [n for n in tied if n != name]
    if not rivals:
        return (
            f"{name} has the highest cross-validated accuracy on this task's labels "
            f"({mine['cv_accuracy']:.3f}; {others})"
        )
    f1s = ", ".join(f"{n} {evidence[n]['cv_macro_f1']:.3f}" for n in rivals)
    why = f"the highest macro F1 ({mine['cv_macro_f1']:.3f}; {f1s})"
    if any(evidence[n]["cv_macro_f1"] >= mine["cv_macro_f1"] for n in rivals):
        briers = ", ".join(f"{n} {evidence[n]['cv_brier']:.3f}" for n in rivals)
        why += f" and then the lowest Brier score ({mine['cv_brier']:.3f}; {briers})"
    return (
        f"{name}'s cross-validated accuracy is within noise of the highest on this task's labels "
        f"({mine['cv_accuracy']:.3f}; {others}); of those candidates it has {why}"
    )
