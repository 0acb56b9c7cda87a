"""The floor the offline auto-labelling bench reports: what any valid claim needs in audits."""

from __future__ import annotations

import math

import pytest
from bench.autolabel_offline import floor_audits

from labelloop.loop.autolabel import evidence_for


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
