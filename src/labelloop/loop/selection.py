"""Choosing what people label next: most uncertain first, never a batch of near-copies."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer

from labelloop.learners.base import Features

#: Two items whose feature vectors have a cosine similarity above this are near-copies.
NEAR_COPY = 0.97
#: How deep into the ranking a batch may reach to stay diverse.
DEPTH = 10


def similarity_vectors(features: Features) -> np.ndarray:
    """Unit vectors for comparing items: their numeric views, or hashed words for texts."""
    parts = []
    for view in features.views.values():
        if isinstance(view, np.ndarray):
            parts.append(np.asarray(view, dtype=np.float64).reshape(len(view), -1))
        else:
            hashed = HashingVectorizer(n_features=2**12, alternate_sign=False).transform(view)
            parts.append(hashed.toarray())
    if not parts:
        return np.zeros((0, 0))
    v = np.hstack(parts)
    v = v - v.mean(axis=1, keepdims=True) if v.shape[1] > 1 else v
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1.0, norms)


def pick_diverse(vectors: np.ndarray, limit: int, near_copy: float = NEAR_COPY) -> list[int]:
    """Positions (in ranking order) of up to ``limit`` items, skipping near-copies of chosen ones.

    If the ranking holds fewer distinct items than ``limit``, the skipped ones fill the rest.
    """
    chosen: list[int] = []
    skipped: list[int] = []
    for pos in range(len(vectors)):
        if len(chosen) == limit:
            break
        if chosen and float(np.max(vectors[chosen] @ vectors[pos])) > near_copy:
            skipped.append(pos)
        else:
            chosen.append(pos)
    return chosen + skipped[: limit - len(chosen)]


def candidates_depth(limit: int, available: int) -> int:
    return min(available, max(limit, limit * DEPTH))
