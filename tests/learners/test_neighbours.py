"""The one k-NN home: exact on small pools, approximate (HNSW) with high recall on large ones,
grown in place when the pool grows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from labelloop.learners import neighbours


def exact(X: np.ndarray, k: int) -> np.ndarray:
    idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X, return_distance=False)
    return idx[:, 1:]  # type: ignore[no-any-return]


def clusters(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim)) * 4
    return (centres[rng.integers(0, 40, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size


def test_small_pools_get_the_exact_neighbours() -> None:
    X = clusters(500, 16, 0)
    assert recall(neighbours.neighbours(X, 5), exact(X, 5)) > 0.99


def test_large_pools_get_nearly_the_exact_neighbours_and_the_index_grows_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(neighbours, "EXACT_BELOW", 1000)
    X = clusters(3000, 24, 1)
    first = X[:-500]
    assert recall(neighbours.neighbours(first, 5), exact(first, 5)) > 0.9
    index = neighbours._growing(24)
    before = index.index.ntotal
    # The pool grows by 500 items: 500 rows are added, none rebuilt; the answers cover them.
    found = neighbours.neighbours(X, 5)
    assert index.index.ntotal == before + 500
    assert recall(found, exact(X, 5)) > 0.9
    # A pool that lost items never answers with them.
    part = X[::2]
    got = neighbours.neighbours(part, 5)
    assert got.max() < len(part) and (got >= 0).mean() > 0.99
    assert recall(got, exact(part, 5)) > 0.9


def test_duplicates_and_tiny_pools() -> None:
    X = np.vstack([clusters(30, 4, 2), clusters(30, 4, 2)[:5]])
    nb = neighbours.neighbours(X, 3)
    assert nb.shape == (35, 3)
    assert all(r not in row for r, row in enumerate(nb.tolist()))
    tiny = neighbours.neighbours(X[:3], 5)
    assert tiny.shape == (3, 5) and (tiny[:, 2:] == -1).all()
    graph = neighbours.knn_graph(X, 3)
    assert (graph != graph.T).nnz == 0 and graph.diagonal().sum() == 0


def test_a_large_pools_index_is_built_once_and_shared_through_its_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(neighbours, "EXACT_BELOW", 1000)
    X = clusters(2500, 20, 3)
    first = X[:-300]
    with neighbours.kept_in(tmp_path):
        found = neighbours.neighbours(first, 5)
    written = tmp_path / "hnsw-20d.faiss"
    assert written.is_file() and recall(found, exact(first, 5)) > 0.9
    stamp = written.stat().st_mtime_ns
    # Another worker (nothing in memory): it reads the index, adds nothing, writes nothing.
    monkeypatch.setattr(neighbours, "_SHARED", {})
    with neighbours.kept_in(tmp_path):
        again = neighbours.neighbours(first, 5)
    assert written.stat().st_mtime_ns == stamp
    assert recall(again, exact(first, 5)) > 0.9
    # Items arrive: the index on disk grows by their rows only, and answers for them.
    monkeypatch.setattr(neighbours, "_SHARED", {})
    with neighbours.kept_in(tmp_path):
        grown = neighbours.neighbours(X, 5)
    index = neighbours.GrowingIndex.read(written, 20)
    assert index.index.ntotal == len(X) and len(index.positions) == len(X)
    assert recall(grown, exact(X, 5)) > 0.9
    assert 20 not in neighbours._GROWING  # nothing was built in this process alone


def test_a_sample_of_a_large_shared_index_gets_its_own_and_the_shared_one_stays(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(neighbours, "EXACT_BELOW", 500)
    monkeypatch.setattr(neighbours, "_SHARED", {})
    monkeypatch.setattr(neighbours, "_GROWING", {})
    X = clusters(3000, 12, 4)
    with neighbours.kept_in(tmp_path):
        neighbours.neighbours(X, 5)
    written = tmp_path / "hnsw-12d.faiss"
    stamp = written.stat().st_mtime_ns
    # A training that reads a sample of the pool (a fifth: less than 1/2.5 of the index).
    sample = X[::5]
    with neighbours.kept_in(tmp_path):
        got = neighbours.neighbours(sample, 5)
    assert written.stat().st_mtime_ns == stamp  # the task's index was not replaced
    assert neighbours.GrowingIndex.read(written, 12).index.ntotal == len(X)
    assert recall(got, exact(sample, 5)) > 0.9 and got.max() < len(sample)
    assert neighbours._GROWING[12].index.ntotal == len(sample)
