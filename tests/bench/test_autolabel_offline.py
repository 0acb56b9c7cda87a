"""The floor the offline auto-labelling bench reports: what any valid claim needs in audits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bench.autolabel_offline import banded_threshold, coverage, floor_audits

from labelloop.loop.autolabel import evidence_for
from labelloop.loop.policy import AutoLabelPolicy


def test_a_model_never_wrong_needs_the_error_free_minimum() -> None:
    assert floor_audits(0.0, 0.98, 0.95, 149) == pytest.approx((evidence_for(0, 0.98, 0.95), 0))


def test_the_floor_grows_with_the_models_error_rate() -> None:
    """At 0.4% error, 149 audits are all right with probability 0.996^149 (55%); otherwise a
    claim waits for 236 audits or more, so the floor lies between the two."""
    floors = [floor_audits(e, 0.98, 0.95, 149) for e in (0.001, 0.004, 0.01)]
    assert floors == sorted(floors)
    clean = 0.996**149
    assert clean * 149 + (1 - clean) * 236 <= floors[1][0] < 236
    assert floors[1][1] == pytest.approx(1 - clean)  # more than 149: some miss among the 149
    assert floor_audits(0.05, 0.98, 0.95) == (math.inf, 1.0)  # below the target: no claim


def _audits(low_misses: int, other_misses: int) -> tuple[np.ndarray, ...]:
    """200 audits all at 0.99: 10 uniform (before a model), 18 from the band, 172 from the rest."""
    conf = np.full(200, 0.99)
    uniform = np.arange(200) < 10
    low = np.arange(200) >= 182
    correct = np.ones(200, dtype=bool)
    correct[182 : 182 + low_misses] = False
    correct[10 : 10 + other_misses] = False
    return conf, correct, low, uniform


def test_a_miss_in_the_oversampled_band_weighs_less_than_one_outside() -> None:
    """Drawn twice as often, a band miss counts half: 200 audits show 98% with one (185 needed), not with one
    outside the band (271 needed, more than the 242 of uniform audits)."""
    auto = AutoLabelPolicy()
    claims = {}
    for misses in ((0, 0), (1, 0), (0, 1)):
        conf, correct, low, uniform = _audits(*misses)
        est = banded_threshold(conf, correct, low, auto, 0.98, 0.05, uniform)
        claims[misses] = est.threshold is not None
    assert claims == {(0, 0): True, (1, 0): True, (0, 1): False}


def test_banded_claims_are_false_no_more_often_than_the_risk() -> None:
    """Simulated pools with their errors in the band, just above it, everywhere or among the
    confident half, just over 2% wrong: the share of claims whose threshold holds more than 2%
    errors stays within 5% (plus Monte Carlo error at 200 runs, deterministic seed)."""
    rates = coverage(reps=200, n=200, share=0.05, factor=2.0)
    assert rates["band (claims)"] > 0.5  # the test can claim at all
    for place in ("band", "above the band", "everywhere", "confident"):
        assert rates[place] <= 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / 200)
