"""Auto-labelling at a target accuracy, with a threshold estimated only from held-out human labels.

After each promotion, the out-of-sample scores of held-out human labels (cross-validation: every
label scored by a model that did not see it) tell how accurate the model is above each confidence
threshold. By default only *audit* labels count: items ``/next`` handed out uniformly at random,
whose labels are unbiased for the pool whatever else people label (items picked because the model
was unsure are far harder than the pool and would make every estimate useless). The threshold is the lowest one at which a one-sided Clopper-Pearson lower bound on that
accuracy still meets the target: a bound, not the point estimate, so a small held-out set can never
claim the target. Thresholds are tested in a fixed sequence (downwards from a start chosen
from the counts alone: the most audits that could show the target with as many misses as they
allow, within nine tenths of them; stopping at the first failure), which keeps the stated
confidence despite scanning many thresholds; the guarantee holds at each promotion. Unlabelled items whose
confidence clears the threshold get a *model* label (an annotation with source ``model``, the
version and the score); model labels never overwrite a human label, are re-derived at every
promotion (those of the items the training scored at once, the rest of a large pool's chunk by
chunk as the pool is re-predicted, :func:`labelloop.loop.prediction.run_predict_job`), and a
person can correct them like any pre-label.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.learners.base import Features, Learner
from labelloop.loop.labels import current_labels, labelled_at
from labelloop.loop.policy import AutoLabelPolicy
from labelloop.loop.prediction import plan_rescore
from labelloop.loop.ranking import set_covered
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Annotation

#: Thresholds tested, highest first.
GRID = tuple(round(t, 3) for t in np.arange(0.995, 0.4999, -0.005))


@functools.lru_cache(maxsize=65536)
def clopper_pearson_lower(successes: int, n: int, confidence: float) -> float:
    """One-sided exact lower bound on a proportion (cached: every scan asks for the same few)."""
    if n == 0 or successes == 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, successes, n - successes + 1))


def min_evidence(target: float, confidence: float) -> int:
    """Fewest held-out labels that could certify ``target`` (all of them right)."""
    return math.ceil(math.log(1.0 - confidence) / math.log(target))


def evidence_for(misses: int, target: float, confidence: float) -> int:
    """Fewest held-out labels, ``misses`` of them wrong, whose lower bound shows ``target``
    (98% at 95%: 149 with no miss, 236 with one, 313 with two)."""
    n = max(min_evidence(target, confidence), misses + 1)
    while clopper_pearson_lower(n - misses, n, confidence) < target:
        n += 1
    return n


#: The first threshold tested covers at most this share of the held-out labels: the least
#: confident tenth is kept back, where a model's errors gather.
START_SHARE = 0.9


def sequence_start(n: int, target: float, confidence: float) -> int:
    """How many of ``n`` held-out labels the first threshold tested covers: the most that could
    show the target with as many misses as they allow (149, 236, 313, ... at 98% and 95%) within
    :data:`START_SHARE` of them.

    A function of counts only, never of which labels were right, so testing down from there
    keeps the fixed-sequence guarantee. Starting low is what ends a run: a claim rests on enough
    audits to absorb the one confidently wrong audit most runs meet, and covers nearly the whole
    pool (the old start, half the audits, certified thresholds that left hundreds of items to
    people, and stopped at the first miss below them; docs/BENCHMARKS.md)."""
    start, misses = min_evidence(target, confidence), 0
    while (more := evidence_for(misses + 1, target, confidence)) <= START_SHARE * n:
        start, misses = more, misses + 1
    return start


def audit_scores(
    learner: Learner,
    X: Features,
    Y: np.ndarray,
    audits: Sequence[int],
    pool: Features | None,
    k: int,
    seed: int,
) -> np.ndarray | None:
    """Out-of-sample scores of the audits (positions in ``X``), each from a model trained on
    every label except a fold of the audits (``k`` folds of the audits only).

    The task's cross-validation leaves out a fold of *every* label, and with it the uncertain
    items people labelled to fix the very regions where audits are confusable: its models err on
    audits that the model which labels the pool (trained on every label) gets right, and each such
    miss costs 87 audits (docs/BENCHMARKS.md). An audit's own label still never scores it, so the
    audits stay held-out evidence. None when the audits are too few to fold (or a fold's
    training set holds one class): the task's cross-validated scores are used then."""
    held = np.asarray(audits, dtype=int)
    if len(held) < max(k, 2):
        return None
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(len(held)) % k
    classes = Y.argmax(axis=1)
    scores = np.zeros((len(held), Y.shape[1]))
    for f in range(k):
        out = held[fold_of == f]
        train = np.setdiff1d(np.arange(len(Y)), out)
        if not learner.multi_label and len(np.unique(classes[train])) < 2:
            return None
        model = learner.clone().fit(X.take(train), Y[train], pool=pool)
        scores[fold_of == f] = model.predict_proba(X.take(out))
    return scores


@dataclass(frozen=True)
class ThresholdEstimate:
    threshold: float | None
    heldout: int
    above: int
    accuracy: float | None
    lower_bound: float | None
    target: float
    confidence: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_label_target(policy: AutoLabelPolicy, items: int, human: int) -> float:
    """Accuracy the model's labels must reach for the policy's target.

    With scope "dataset" people's labels count as right, so model labels may err a little more:
    the data set stays at the target if model labels reach 1 - (1 - target) * N / (N - H).
    """
    if policy.scope == "model-labels" or items <= human:
        return policy.target_accuracy
    return max(0.5, 1.0 - (1.0 - policy.target_accuracy) * items / (items - human))


#: Share of the risk (one minus ``confidence``) spent on the scan that starts low
#: (:func:`sequence_start`); the rest goes to one that starts at half the audits, for learners
#: that are right only on part of the pool (their errors fill more than the least confident
#: tenth, where the low start would claim nothing).
LOW_START_RISK = 0.9


def estimate_threshold(
    confidence_scores: np.ndarray,
    correct: np.ndarray,
    policy: AutoLabelPolicy,
    target: float | None = None,
) -> ThresholdEstimate:
    """The lowest threshold whose held-out accuracy bound meets the target, or None.

    Two fixed sequences scan the thresholds downwards, each at its share of the risk (so the
    two together keep ``policy.confidence``: Bonferroni): one from :func:`sequence_start`, one
    from the threshold that covers half the audits; the lower claim stands."""
    n = len(confidence_scores)
    target = policy.target_accuracy if target is None else target
    conf = policy.confidence

    def none(reason: str) -> ThresholdEstimate:
        return ThresholdEstimate(None, n, 0, None, None, target, conf, reason)

    if n < policy.min_labels:
        return none(f"{n} held-out human labels, fewer than min_labels={policy.min_labels}")
    risk = 1.0 - conf
    low = 1.0 - LOW_START_RISK * risk
    high = 1.0 - (1.0 - LOW_START_RISK) * risk
    need = min_evidence(target, low)
    claims = [
        _scan(confidence_scores, correct, sequence_start(n, target, low), target, low, conf),
        _scan(
            confidence_scores,
            correct,
            max(min_evidence(target, high), math.ceil(n / 2)),
            target,
            high,
            conf,
        ),
    ]
    found = [c for c in claims if isinstance(c, ThresholdEstimate)]
    if found:
        return min(found, key=lambda c: c.threshold or 1.0)
    if not any(claims):
        return none(
            f"no threshold has the {need} held-out labels needed to show {target:.1%} "
            f"with {conf:.0%} confidence"
        )
    return none(f"no threshold shows {target:.1%} accuracy with {conf:.0%} confidence")


def _scan(
    scores: np.ndarray,
    correct: np.ndarray,
    start_at: int,
    target: float,
    level: float,
    stated: float,
) -> ThresholdEstimate | bool:
    """One fixed sequence: down from the first threshold covering ``start_at`` audits, each
    tested at ``level``, until the first bound below the target. The lowest threshold passed,
    else whether the sequence started at all."""
    n = len(scores)
    best: ThresholdEstimate | bool = False
    for t in GRID:
        above = scores >= t
        k, m = int(correct[above].sum()), int(above.sum())
        # Where the sequence starts depends only on how many scores clear t, never on whether
        # they were right, so the fixed-sequence guarantee holds.
        if m < start_at:
            continue
        bound = clopper_pearson_lower(k, m, level)
        if bound < target:
            return best or True
        best = ThresholdEstimate(float(t), n, m, k / m, bound, target, stated, "target met")
    return best


@dataclass(frozen=True)
class Applied:
    labelled: int
    changed: int
    retracted: int


def apply_model_labels(
    session: Session,
    spec: TaskSpec,
    version: int,
    item_ids: Sequence[int],
    scores: np.ndarray,
    threshold: float | None,
    within: Sequence[int] | None = None,
) -> Applied:
    """Re-derive the task's model labels from ``version``; only changes are appended.

    A model label that ``version`` confirms is appended again when an older version set it, so
    that every model label's version and score are those of the model that now stands behind it
    (an older score may sit below the new threshold). With ``within`` (a chunk's items, which
    ``item_ids`` scored those of that did not fail), only those items' labels are read and only
    theirs are retracted: what a chunk reads grows with the chunk, not with the task."""
    human = current_labels(session, spec.id, source="human", item_ids=within)
    old_at = labelled_at(session, spec.id, source="model", item_ids=within)
    old = {item_id: labels for item_id, (labels, _) in old_at.items()}
    set_by = {
        rev: set_version
        for rev, set_version in session.execute(
            select(Annotation.id, Annotation.model_version).where(
                Annotation.id.in_([rev for _, rev in old_at.values()])
            )
        )
    }
    new: dict[int, tuple[list[str], float]] = {}
    if threshold is not None and len(item_ids):
        conf = spec.kind.confidence(scores)
        chosen = spec.kind.decide(scores, spec.labels)
        for i, item_id in enumerate(item_ids):
            if item_id not in human and conf[i] >= threshold and chosen[i]:
                new[int(item_id)] = (chosen[i], float(conf[i]))
    rows = []
    changed = 0
    for item_id, (labels, score) in new.items():
        relabelled = not spec.kind.same(old.get(item_id), labels)
        changed += relabelled
        if relabelled or set_by.get(old_at[item_id][1]) != version:
            rows.append(
                Annotation(
                    task_id=spec.id,
                    item_id=item_id,
                    labels=labels,
                    source="model",
                    model_version=version,
                    score=score,
                )
            )
    retracted = [i for i in old if i not in new and i not in human]
    rows += [
        Annotation(task_id=spec.id, item_id=i, labels=None, source="model", model_version=version)
        for i in retracted
    ]
    session.add_all(rows)
    set_covered(session, [i for i in new if i not in old], True)
    set_covered(session, retracted, False)
    return Applied(len(new), changed, len(retracted))


def run_autolabel_job(rt: Runtime, job_id: int) -> list[int]:
    """A job an earlier server queued after a promotion by hand: it re-predicts the whole pool
    in chunk jobs, each re-deriving its own items' model labels, as the ``rescore`` job of a
    promotion by hand now does (:func:`labelloop.loop.prediction.plan_rescore`)."""
    return plan_rescore(rt, job_id, everything=True)
