from __future__ import annotations

import numpy as np
import pytest

from labelloop.kinds import kind_for
from labelloop.loop.evaluation import compare, correct, folds, should_promote, wilson_lower


def test_a_few_new_labels_never_block_a_candidate() -> None:
    cand = np.array([False, False])
    served = np.array([True, True])
    assert should_promote(cand, served, 0.95).promote


def test_a_clearly_worse_candidate_is_kept_out() -> None:
    served = np.ones(40, dtype=bool)
    cand = np.zeros(40, dtype=bool)
    cand[:25] = True
    decision = should_promote(cand, served, 0.95)
    assert not decision.promote
    assert decision.n == 40 and decision.served_correct == 40 and decision.candidate_correct == 25
    assert "served model is better" in decision.reason


def test_equal_models_promote() -> None:
    ok = np.array([True, False, True, True])
    assert should_promote(ok, ok, 0.95).promote


def test_correct_multi_label_is_exact_match() -> None:
    Y = np.array([[1, 0, 1], [0, 1, 0]])
    P = np.array([[0.9, 0.2, 0.7], [0.6, 0.8, 0.1]])
    assert correct(P, Y, multi_label=True).tolist() == [True, False]


def test_folds_cover_every_item_once() -> None:
    Y = np.eye(3)[np.array([0, 1, 2] * 5 + [0])]
    seen = np.concatenate([test for _, test in folds(Y, 5, seed=0, multi_label=False)])
    assert sorted(seen.tolist()) == list(range(len(Y)))


def test_wilson_lower_bound_is_careful_with_small_samples() -> None:
    assert wilson_lower(5, 5) < 0.7
    assert wilson_lower(990, 1000) > 0.98
    assert wilson_lower(0, 0) == 0.0


def test_spans_are_promoted_on_entity_f1() -> None:
    """A candidate whose spans are better on the newer labels promotes; one clearly worse on
    entity F1 (paired sign test on spans missed or wrongly proposed per text) is kept out."""
    kind = kind_for("text-spans")
    gold = [[{"start": 0, "end": 5, "label": "PER"}, {"start": 9, "end": 13, "label": "ORG"}]] * 30
    Y = kind.encode(gold, ["PER", "ORG"])

    def answers(spans: list[dict[str, object]]) -> np.ndarray:
        out = np.empty(len(Y), dtype=object)
        for i in range(len(Y)):
            out[i] = {"spans": [{**s, "score": 0.9} for s in spans], "certainty": 0.9}
        return out

    good, half = answers(gold[0]), answers(gold[0][:1])
    decision = compare(kind, good, half, Y, 0.95)
    assert decision.promote and decision.candidate_score == 1.0
    assert decision.served_score == pytest.approx(2 / 3, abs=1e-6)
    assert "entity F1 candidate 1.000, served 0.667" in decision.reason
    decision = compare(kind, half, good, Y, 0.95)
    assert not decision.promote and decision.reason.startswith("served model is better")
    assert compare(kind, half, half, Y, 0.95).promote  # no difference: the newer model goes
