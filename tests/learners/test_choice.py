"""The choice of learner by out-of-sample scores, on constructed scores (no model is trained).

Accuracy decides; a near-tie (within one standard error of the paired difference) goes to the
higher macro F1, then to the lower Brier score; a clear accuracy lead is never overruled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pytest

from labelloop.learners.base import Features, Featurizer, Learner
from labelloop.learners.choice import brier, choose, near_tie, pick, score

CLASSES = 4


def truth(n: int) -> np.ndarray:
    """One-hot targets cycling over the classes."""
    return np.eye(CLASSES)[np.arange(n) % CLASSES]


def scores(
    Y: np.ndarray, right: Sequence[bool] | np.ndarray, sure: float, sure_wrong: float | None = None
) -> np.ndarray:
    """Scores that put ``sure`` on the true class where ``right``, else ``sure_wrong`` (default:
    ``sure``) on the next class; the rest is spread evenly over the other classes."""
    y = Y.argmax(axis=1)
    ok = np.asarray(right)
    top = np.where(ok, y, (y + 1) % CLASSES)
    p = np.where(ok, sure, sure if sure_wrong is None else sure_wrong)
    out = np.repeat(((1.0 - p) / (CLASSES - 1))[:, None], CLASSES, axis=1)
    out[np.arange(len(Y)), top] = p
    return out


def right_on(n: int, items: Sequence[int]) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[list(items)] = True
    return out


def test_a_near_tie_is_within_one_standard_error_of_the_paired_difference() -> None:
    a = right_on(10, range(6))
    assert near_tie(a, a.copy())  # the same items right: nothing tells them apart
    # a is right on 7, b on 6; of the three items only one gets right, a has two: 1 <= sqrt(3).
    assert near_tie(right_on(10, range(7)), right_on(10, [0, 1, 2, 3, 4, 7]))
    # 4 of 4 such items to a: 4 > sqrt(4).
    assert not near_tie(right_on(10, range(8)), right_on(10, range(4)))
    # One item to a and none to b is noise (1 <= sqrt(1)); so are 3 such items against 2.
    assert near_tie(right_on(10, range(1)), right_on(10, []))
    assert near_tie(right_on(10, range(3)), right_on(10, [5, 6]))
    assert not near_tie(right_on(100, range(90)), right_on(100, range(60)))


def test_an_accuracy_tie_at_ten_labels_goes_to_the_lower_brier_score() -> None:
    """The cold start on natural photos: pixels and the linear head both 0.6 at 10 labels; the
    earlier candidate (pixels) no longer wins by its place in the list."""
    Y = truth(10)
    right = [True] * 6 + [False] * 4
    hesitant = scores(Y, right, sure=0.4)  # pixels: right on 6, barely
    confident = scores(Y, right, sure=0.8, sure_wrong=0.4)  # the head: sure where right
    assert brier(confident, Y) < brier(hesitant, Y)
    won, tied = pick([hesitant, confident], Y, multi_label=False)
    assert (won, tied) == (1, [0, 1])


def test_an_accuracy_tie_goes_to_the_candidate_that_answers_every_class() -> None:
    """Both right on 6 of 10; the first only ever answers class 0 or 1 (and is surer), the
    second gets some of every class right."""
    Y = truth(10)  # classes 0 1 2 3 0 1 2 3 0 1
    y = Y.argmax(axis=1)
    collapsed = np.full(Y.shape, 0.2)  # hesitant where wrong...
    collapsed[:, 0] = 0.4  # ...answering 0 for every 2 and 3
    sure = (y == 0) | (y == 1)  # right on the 0s and 1s (6 of 10), and sure there
    collapsed[sure] = 0.02
    collapsed[np.flatnonzero(sure), y[sure]] = 0.94
    spread = scores(Y, right_on(10, [0, 1, 2, 3, 4, 5]), sure=0.5)  # right on each class
    assert brier(collapsed, Y) < brier(spread, Y)
    won, tied = pick([collapsed, spread], Y, multi_label=False)
    assert (won, tied) == (1, [0, 1])


def test_one_label_more_right_is_noise_at_ten_labels() -> None:
    Y = truth(10)
    more = scores(Y, right_on(10, range(7)), sure=0.35)  # 0.7
    fewer = scores(Y, right_on(10, [0, 1, 2, 3, 4, 7]), sure=0.9, sure_wrong=0.35)  # 0.6
    won, tied = pick([more, fewer], Y, multi_label=False)
    assert tied == [0, 1]  # the one-label lead does not decide: the macro F1 does
    f1 = [score(p, Y, multi_label=False).macro_f1 for p in (more, fewer)]
    assert f1[0] != f1[1] and won == int(np.argmax(f1))


def test_a_clear_accuracy_lead_is_never_overruled_by_the_brier_score() -> None:
    Y = truth(30)
    best = scores(Y, [True] * 30, sure=0.4)  # right on all 30, barely
    worse = scores(Y, [True] * 20 + [False] * 10, sure=0.99)  # right on 20, sure of everything
    worse[20:] = scores(Y[20:], [False] * 10, sure=0.51)  # its mistakes: near misses
    assert brier(worse, Y) < brier(best, Y)
    won, tied = pick([worse, best], Y, multi_label=False)
    assert (won, tied) == (1, [1])


def test_equal_scores_go_to_the_earlier_cheaper_candidate() -> None:
    Y = truth(12)
    same = scores(Y, [True] * 8 + [False] * 4, sure=0.7)
    assert pick([same, same.copy()], Y, multi_label=False)[0] == 0


def test_multi_label_scores_are_compared_the_same_way() -> None:
    Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]] * 3, dtype=float)
    hesitant = np.where(Y == 1, 0.55, 0.45)
    sure = np.where(Y == 1, 0.9, 0.1)
    assert pick([hesitant, sure], Y, multi_label=True)[0] == 1


# -- through choose(): the version's evidence and reason ----------------------------------------


class ItemIndex(Featurizer):
    """The item's index as its only feature (no ``name``: not registered)."""

    view: ClassVar[str] = "index"

    @property
    def version(self) -> str:
        return "index-1"

    def transform(self, raws: Sequence[bytes]) -> np.ndarray:
        return np.array([[int(r)] for r in raws])


class Scripted(Learner):
    """Answers each item with the scores it was given, whatever it was trained on."""

    name = "scripted"

    def __init__(
        self,
        labels: Sequence[str],
        multi_label: bool = False,
        *,
        table: list[list[float]] | None = None,
    ) -> None:
        super().__init__(labels, multi_label)
        self.table = table

    def make_featurizers(self) -> list[Featurizer]:
        return [ItemIndex()]

    def fit(
        self, X: Features, Y: np.ndarray, pool: Features | None = None, init: Learner | None = None
    ) -> Self:
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        return np.take(np.asarray(self.table), X.array("index")[:, 0], axis=0)

    def _state(self) -> Any:
        return None

    def _restore(self, state: Any) -> None:
        pass


class Pixels(Scripted):
    name = "pixels-like"


class Head(Scripted):
    name = "head-like"


@pytest.mark.parametrize("sure_head", [0.8, 0.3])
def test_choose_says_why_a_near_tie_went_where_it_did(sure_head: float) -> None:
    Y = truth(10)
    right = [True] * 6 + [False] * 4
    labels = [str(c) for c in range(CLASSES)]
    pixels = Pixels(labels, table=scores(Y, right, sure=0.5).tolist())
    head = Head(labels, table=scores(Y, right, sure=sure_head, sure_wrong=0.5).tolist())
    X = Features({"index": ItemIndex().transform([str(i).encode() for i in range(10)])})
    choice = choose([pixels, head], X, Y, None, k=5, seed=0)
    winner = "head-like" if sure_head > 0.5 else "pixels-like"
    assert choice.learner.name == winner
    ev = choice.candidates
    assert ev["pixels-like"]["cv_accuracy"] == ev["head-like"]["cv_accuracy"] == 0.6
    assert ev[winner]["cv_brier"] < min(e["cv_brier"] for n, e in ev.items() if n != winner)
    assert "Brier" in choice.reason and "within noise" in choice.reason
    assert ev["pixels-like"]["cv_macro_f1"] == ev["head-like"]["cv_macro_f1"]
    assert np.allclose(choice.oos, np.asarray((head if winner == "head-like" else pixels).table))
