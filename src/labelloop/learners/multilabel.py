"""Binary relevance: one binary model per label, for multi-label tasks."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone


class BinaryRelevance:
    """Fits a clone of ``template`` per label column; a label never (or always) seen gets a
    constant score instead of a degenerate model."""

    def __init__(self, template: Any) -> None:
        self.template = template
        self.models: list[Any | float] = []

    def fit(self, X: Any, Y: np.ndarray) -> BinaryRelevance:
        self.models = []
        for j in range(Y.shape[1]):
            col = Y[:, j].astype(int)
            if col.min() == col.max():
                # Never or always present so far: a smoothed constant, not a degenerate model.
                self.models.append(float((col.sum() + 0.5) / (len(col) + 1.0)))
            else:
                self.models.append(clone(self.template).fit(X, col))
        return self

    def predict_proba(self, X: Any, n: int) -> np.ndarray:
        out = np.empty((n, len(self.models)), dtype=np.float64)
        for j, model in enumerate(self.models):
            if isinstance(model, float):
                out[:, j] = model
            else:
                out[:, j] = model.predict_proba(X)[:, 1]
        return out
