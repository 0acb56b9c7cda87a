"""The auto-labelling threshold: a lower bound, never a claim on too little evidence."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.loop.autolabel import clopper_pearson_lower, estimate_threshold, min_evidence
from labelloop.loop.policy import AutoLabelPolicy

POLICY = AutoLabelPolicy(target_accuracy=0.98, min_labels=10, confidence=0.95)


def test_never_claims_the_target_on_a_small_held_out_set() -> None:
    need = min_evidence(0.98, 0.95)
    assert need == 149
    # Every held-out label right and very confident, but one short of what could show 98%.
    conf = np.full(need - 1, 0.999)
    est = estimate_threshold(conf, np.ones(need - 1, dtype=bool), POLICY)
    assert est.threshold is None and "needed" in est.reason
    # With enough of them, a threshold is found, and its bound really is above the target.
    est = estimate_threshold(np.full(need, 0.999), np.ones(need, dtype=bool), POLICY)
    assert est.threshold is not None and est.lower_bound is not None and est.lower_bound >= 0.98


def test_bound_is_below_the_point_estimate() -> None:
    assert clopper_pearson_lower(99, 100, 0.95) < 0.99
    assert clopper_pearson_lower(0, 10, 0.95) == 0.0
    assert clopper_pearson_lower(10, 10, 0.95) == pytest.approx(0.05 ** (1 / 10))


def test_threshold_stops_where_errors_start() -> None:
    rng = np.random.default_rng(0)
    # 600 confident and right, then a band of unsure items that are right only half the time.
    conf = np.concatenate([rng.uniform(0.9, 1.0, 600), rng.uniform(0.5, 0.8, 400)])
    correct = np.concatenate([np.ones(600, dtype=bool), rng.random(400) < 0.5])
    est = estimate_threshold(conf, correct, POLICY)
    assert est.threshold is not None and 0.7 <= est.threshold <= 0.91
    above = conf >= est.threshold
    assert correct[above].mean() >= 0.98
    assert est.above == int(above.sum())


def test_errors_among_the_most_confident_prevent_any_claim() -> None:
    conf = np.linspace(0.5, 1.0, 400)
    correct = np.ones(400, dtype=bool)
    correct[-20:] = False  # the model is confidently wrong at the top
    assert estimate_threshold(conf, correct, POLICY).threshold is None


def test_min_labels_is_respected() -> None:
    policy = AutoLabelPolicy(target_accuracy=0.9, min_labels=500, confidence=0.9)
    est = estimate_threshold(np.ones(300), np.ones(300, dtype=bool), policy)
    assert est.threshold is None and "min_labels" in est.reason
