"""What /next ranks by: diversity within a batch and density-weighted uncertainty."""

from __future__ import annotations

import numpy as np

from labelloop.learners.base import Features
from labelloop.loop.selection import graph_degrees, pick_diverse, similarity_vectors


def test_near_copies_are_pushed_back() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(16)
    rows = np.vstack([base, base + 1e-4, base + 2e-4, rng.random(16), rng.random(16)])
    vectors = similarity_vectors(Features({"pixels": rows}))
    assert pick_diverse(vectors, 3) == [0, 3, 4]
    assert pick_diverse(vectors, 5) == [0, 3, 4, 1, 2]  # copies only fill what is left


def test_texts_compare_by_their_words() -> None:
    vectors = similarity_vectors(
        Features({"text": ["the cat sat", "the cat sat", "stock prices fell"]})
    )
    assert pick_diverse(vectors, 2) == [0, 2]


def test_hubs_have_higher_degree_than_outliers() -> None:
    rng = np.random.default_rng(1)
    cluster = rng.normal(0, 0.1, (40, 2))
    outlier = np.array([[10.0, 10.0]])
    degrees = graph_degrees(Features({"pixels": np.vstack([cluster, outlier])}), k=5)
    assert degrees is not None
    assert degrees[-1] == 5  # nobody lists the outlier among its neighbours
    assert degrees[:-1].max() > 5
    assert graph_degrees(Features({"text": ["a", "b", "c", "d"]})) is None
