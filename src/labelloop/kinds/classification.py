"""The first kind: classification, one label per item (multi-class) or a set (multi-label).

The value is a list of labels from the task's set. Models answer a score per label; this module
turns scores into values (:func:`decide`), into a confidence (:func:`top_score`), values into
indicator targets (:func:`indicator`), and scores them (:func:`score`, :func:`correct`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from labelloop.errors import InvalidInput
from labelloop.kinds.base import Scores, TaskKind, Value, quoted

if TYPE_CHECKING:
    from labelloop.loop.suspects import Suspect


def indicator(label_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """Indicator matrix (items x labels) of label sets over the task's label list."""
    index = {label: j for j, label in enumerate(labels)}
    Y = np.zeros((len(label_sets), len(labels)), dtype=np.int8)
    for i, ls in enumerate(label_sets):
        for label in ls:
            Y[i, index[label]] = 1
    return Y


def decide(scores: np.ndarray, labels: Sequence[str], multi_label: bool) -> list[list[str]]:
    """The label set a model proposes for each row of scores."""
    if multi_label:
        return [[labels[j] for j in np.flatnonzero(row >= 0.5).tolist()] for row in scores]
    return [[labels[int(j)]] for j in scores.argmax(axis=1).tolist()]


def top_score(scores: np.ndarray, multi_label: bool) -> np.ndarray:
    """Confidence of the proposed label set: top probability, or the weakest per-label decision."""
    if multi_label:
        return np.min(np.maximum(scores, 1.0 - scores), axis=1)  # type: ignore[no-any-return]
    return scores.max(axis=1)  # type: ignore[no-any-return]


def same_labels(a: Sequence[Any] | None, b: Sequence[Any] | None) -> bool:
    return a is not None and b is not None and sorted(a) == sorted(b)


def score(proba: np.ndarray, Y: np.ndarray, multi_label: bool) -> Scores:
    # scikit-learn loads where a version is scored, not in the API that imports the kinds.
    from sklearn.metrics import f1_score

    if len(Y) == 0:
        return Scores(0.0, 0.0, 0)
    if multi_label:
        pred = (proba >= 0.5).astype(int)
        acc = float((pred == Y).all(axis=1).mean())
        f1 = float(f1_score(Y, pred, average="macro", zero_division=0))
    else:
        y, p = Y.argmax(axis=1), proba.argmax(axis=1)
        acc = float((y == p).mean())
        f1 = float(f1_score(y, p, average="macro", labels=np.unique(y), zero_division=0))
    return Scores(acc, f1, len(Y))


def correct(proba: np.ndarray, Y: np.ndarray, multi_label: bool) -> np.ndarray:
    """Per item: did the proposed label set equal the true one."""
    if multi_label:
        return ((proba >= 0.5).astype(int) == Y).all(axis=1)  # type: ignore[no-any-return]
    return proba.argmax(axis=1) == Y.argmax(axis=1)  # type: ignore[no-any-return]


class Classification(TaskKind):
    """Multi-class (exactly one label per item) or multi-label (any set, empty included)."""

    name = "classification"
    value_field = "labels"
    labelstudio_control = "Choices"
    labelstudio_type = "choices"

    @property
    def multi_label(self) -> bool:
        return self.extra == "multi-label"

    @property
    def widget(self) -> str:
        return "multi-choice" if self.multi_label else "choice"

    def check_labels(self, labels: Sequence[str]) -> None:
        if not self.multi_label and len(labels) < 2:
            raise InvalidInput("a multi-class task needs at least two labels")

    def validate(
        self, value: Value | None, labels: Sequence[str], where: str, text: str | None = None
    ) -> None:
        if value is None:
            return
        unknown = [label for label in value if label not in labels]
        if unknown:
            raise InvalidInput(
                f"{where}: unknown label(s) {quoted(unknown)}; "
                f"the task's labels are {quoted(labels)}"
            )
        if len(set(value)) != len(value):
            raise InvalidInput(f"{where}: a label repeats")
        if not self.multi_label and len(value) != 1:
            raise InvalidInput(f"{where}: a multi-class task takes exactly one label per item")

    def same(self, a: Value | None, b: Value | None) -> bool:
        return same_labels(a, b)

    def classes(self, value: Value) -> set[str]:
        return set(value)

    # -- models' answers ----------------------------------------------------------------------
    def encode(self, values: Sequence[Value], labels: Sequence[str]) -> np.ndarray:
        """Values as the learners' targets (an indicator matrix)."""
        return indicator(values, labels)

    def decide(self, scores: np.ndarray, labels: Sequence[str]) -> list[Value]:
        return list(decide(scores, labels, self.multi_label))

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        return top_score(scores, self.multi_label)

    def score(self, proba: np.ndarray, Y: np.ndarray) -> Scores:
        return score(proba, Y, self.multi_label)

    def correct(self, proba: np.ndarray, Y: np.ndarray) -> np.ndarray:
        return correct(proba, Y, self.multi_label)

    def suspects(self, proba: np.ndarray, Y: np.ndarray, labels: Sequence[str]) -> list[Suspect]:
        from labelloop.loop.suspects import find_suspects  # (the loop imports the kinds)

        return find_suspects(proba, Y, labels, self.multi_label)

    # -- Label Studio -------------------------------------------------------------------------
    def labelstudio_result(
        self,
        value: Value,
        score: float | None,
        from_name: str,
        to_name: str,
        text: str | None = None,
    ) -> list[dict[str, Any]]:
        if not value:
            return []
        out: dict[str, Any] = {
            "from_name": from_name,
            "to_name": to_name,
            "type": self.labelstudio_type,
            "value": {"choices": list(value)},
        }
        if score is not None:
            out["score"] = score
        return [out]

    def labelstudio_value(self, results: Sequence[Any], from_name: str) -> Value | None:
        chosen: list[str] = []
        for r in results:
            if not isinstance(r, dict) or r.get("from_name") != from_name:
                continue
            if r.get("type", self.labelstudio_type) != self.labelstudio_type:
                continue
            value = r.get("value") or {}
            chosen.extend(str(c) for c in value.get("choices") or [])
        return list(dict.fromkeys(chosen)) or None

    # -- export -------------------------------------------------------------------------------
    def csv_cell(self, value: Value | None) -> str:
        return "|".join(value or [])
