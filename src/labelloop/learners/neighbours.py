"""The one home of nearest neighbours: approximate (faiss HNSW), built once and grown in place.

Density weighting (:mod:`labelloop.loop.selection`) and label spreading
(:mod:`labelloop.learners.image`) read the pool's k-nearest-neighbour graph from here. A brute-force
graph costs O(n²) (22.7 s at 40k items, issue 17); an HNSW index costs about O(n log n) to build and
answers each query in about O(log n). The index of a feature space is kept per process and *grown*
when the pool grows: rows already in it (known by a hash of their bytes) are not added again, so a
training after a few new items adds a few rows instead of rebuilding. Small pools (below
:data:`EXACT_BELOW` rows) use an exact flat index: no approximation where it costs nothing.

Chosen by measurement (docs/BENCHMARKS.md, "Neighbours"): ``faiss-cpu`` installs as a wheel and
grows in place; ``hnswlib`` has no wheel for this Python (it would
compile), ``pynndescent`` pulls numba and llvmlite and compiles at first use.
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from labelloop.learners.poolcache import cached, fingerprint_array

if TYPE_CHECKING:
    from scipy import sparse

# scipy and faiss are imported where a graph is built: the API imports this module through the
# query strategies, and a cluster's API never builds a graph.

#: Below this many rows the index is exact (a flat scan costs about what building a graph does).
EXACT_BELOW = 20_000
#: HNSW links per node and search breadth (recall@5 above 0.9 on clustered features).
HNSW_M = 16
EF_SEARCH = 48
EF_CONSTRUCTION = 40
#: A pool that is less than 1/MAX_SHARE of the grown index gets an index of its own.
MAX_SHARE = 2.5

_LOCK = threading.Lock()
_GROWING: dict[int, GrowingIndex] = {}


def _faiss() -> Any:
    import faiss  # imported on first use: light processes never load it

    # One thread: OpenMP threads spin, and on a machine the API shares they starve it.
    faiss.omp_set_num_threads(1)
    return faiss


def _row_keys(X: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(row.tobytes(), digest_size=12).digest() for row in X]


class GrowingIndex:
    """An HNSW index of one feature space (one dimension) that rows are only ever added to."""

    def __init__(self, dim: int) -> None:
        faiss = _faiss()
        self.dim = dim
        self.index = faiss.IndexHNSWFlat(dim, HNSW_M)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.hnsw.efSearch = EF_SEARCH
        self.positions: dict[bytes, int] = {}
        self.lock = threading.Lock()

    def add(self, X: np.ndarray) -> np.ndarray:
        """Each row's position in the index; rows not in it yet are added (duplicates once)."""
        keys = _row_keys(X)
        with self.lock:
            new: dict[bytes, int] = {}
            for r, key in enumerate(keys):
                if key not in self.positions and key not in new:
                    new[key] = r
            if new:
                start = self.index.ntotal
                self.index.add(np.ascontiguousarray(X[list(new.values())]))
                for offset, key in enumerate(new):
                    self.positions[key] = start + offset
            return np.fromiter((self.positions[k] for k in keys), dtype=np.int64, count=len(keys))

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        with self.lock:
            _, found = self.index.search(np.ascontiguousarray(Q), k)
        return found  # type: ignore[no-any-return]


def _growing(dim: int) -> GrowingIndex:
    with _LOCK:
        index = _GROWING.get(dim)
        if index is None:
            index = _GROWING[dim] = GrowingIndex(dim)
        return index


def neighbours(X: np.ndarray, k: int) -> np.ndarray:
    """Positions (in ``X``) of each row's ``k`` nearest other rows, nearest first; -1 pads rows
    that have fewer (a pool of fewer than ``k + 1`` rows)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = len(X)
    if n < EXACT_BELOW:
        flat = _faiss().IndexFlatL2(X.shape[1])
        flat.add(X)
        _, found = flat.search(X, min(k + 1, n))
        rows = found
    else:
        grow = _growing(X.shape[1])
        if grow.index.ntotal > MAX_SHARE * n:  # mostly other pools' rows: a fresh index
            grow = GrowingIndex(X.shape[1])
        pos = grow.add(X)
        inverse = np.full(grow.index.ntotal, -1, dtype=np.int64)
        inverse[pos[::-1]] = np.arange(n)[::-1]  # a duplicated row answers for the first copy
        # Ask deeper than k: rows of other pools that this pool lacks are dropped.
        ask = int(np.ceil((k + 1) * 1.5 * grow.index.ntotal / n)) + 2
        found = grow.search(X, ask)
        rows = np.where(found >= 0, inverse[np.maximum(found, 0)], -1)
    return _first_others(rows, k)


def _first_others(rows: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` entries of each row that are neither the row itself nor -1."""
    n = len(rows)
    ok = (rows >= 0) & (rows != np.arange(n)[:, None])
    order = np.argsort(~ok, axis=1, kind="stable")
    picked = np.take_along_axis(rows, order, axis=1)[:, :k]
    valid = np.take_along_axis(ok, order, axis=1)[:, :k]
    out = np.where(valid, picked, -1)
    if out.shape[1] < k:
        out = np.hstack([out, np.full((n, k - out.shape[1]), -1)])
    return out


def knn_graph(nodes: np.ndarray, k: int) -> sparse.csr_matrix:
    """The symmetric, unweighted k-nearest-neighbour graph of the rows of ``nodes``.

    Cached by the pool's fingerprint: training's density weights and the image learner's label
    spreading, and the folds of one training, read one graph.
    """
    X = np.ascontiguousarray(nodes, dtype=np.float32)

    def build() -> sparse.csr_matrix:
        from scipy import sparse

        n = len(X)
        kk = max(1, min(k, n - 1))
        nb = neighbours(X, kk)
        src = np.repeat(np.arange(n), kk)
        dst = nb.ravel()
        keep = dst >= 0
        W = sparse.csr_matrix((np.ones(int(keep.sum())), (src[keep], dst[keep])), shape=(n, n))
        return W.maximum(W.T).tocsr()

    graph: sparse.csr_matrix = cached(("knn-graph", fingerprint_array(X), k), build)
    return graph


def nearest(nodes: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Positions in ``nodes`` of the ``k`` nearest rows to each query (exact: a model's own
    nodes at prediction time, a bounded set)."""
    X = np.ascontiguousarray(nodes, dtype=np.float32)

    def build() -> Any:
        flat = _faiss().IndexFlatL2(X.shape[1])
        flat.add(X)
        return flat

    flat = cached(("nearest", fingerprint_array(X)), build)
    _, found = flat.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(X)))
    return found  # type: ignore[no-any-return]
