"""Audits scored apart (``audit_scores``): each by a model trained on every label but a fold of
the audits, never on its own."""

from __future__ import annotations

import numpy as np

from labelloop.learners.base import Features
from labelloop.learners.image import PoolSVM
from labelloop.loop.autolabel import audit_scores

LABELS = ["a", "b"]


class _Spy(PoolSVM):
    """Records, for every prediction, the rows the predicting model was trained on."""

    calls: list[tuple[set[bytes], set[bytes]]] = []

    def fit(self, X, Y, pool=None, init=None):  # type: ignore[no-untyped-def]
        self._trained = {row.tobytes() for row in X.array("pixels")}
        return super().fit(X, Y, pool=pool)

    def predict_proba(self, X):  # type: ignore[no-untyped-def]
        _Spy.calls.append((self._trained, {row.tobytes() for row in X.array("pixels")}))
        return super().predict_proba(X)


def test_audits_are_scored_apart_by_models_that_never_saw_them() -> None:
    """Each audit is scored once, by a model trained without its label but with every label that
    is not an audit (the uncertain items people labelled stay in every fold)."""
    rng = np.random.default_rng(3)
    x = np.vstack([rng.normal(c, 0.3, (30, 4)) for c in (0.0, 2.0)]).astype(np.float32)
    y = np.repeat([0, 1], 30)
    Y = np.eye(2)[y]
    X = Features({"pixels": x})
    audits = list(range(0, 60, 2))
    _Spy.calls = []
    scores = audit_scores(_Spy(LABELS), X, Y, audits, X, 5, seed=0)
    assert scores is not None and scores.shape == (len(audits), 2)
    assert (scores.argmax(axis=1) == y[audits]).mean() > 0.9  # well separated: mostly right
    rows = [r.tobytes() for r in x]
    scored = [row for _, predicted in _Spy.calls for row in predicted]
    assert sorted(scored) == sorted(rows[a] for a in audits)  # each audit once
    others = {rows[i] for i in range(60) if i not in audits}
    for trained, predicted in _Spy.calls:
        assert not trained & predicted and others <= trained


def test_too_few_audits_fall_back_to_the_cross_validated_scores() -> None:
    X = Features({"pixels": np.eye(6, dtype=np.float32)})
    assert audit_scores(PoolSVM(LABELS), X, np.eye(2)[[0, 1] * 3], [0, 1, 2], X, 5, 0) is None
