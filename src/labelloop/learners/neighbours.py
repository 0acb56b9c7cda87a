"""The one home of nearest neighbours: approximate (faiss HNSW), built once and grown in place.

Density weighting (:mod:`labelloop.loop.selection`) and label spreading
(:mod:`labelloop.learners.image`) read the pool's k-nearest-neighbour graph from here. A brute-force
graph costs O(n²) (22.7 s at 40k items, issue 17); an HNSW index costs about O(n log n) to build and
answers each query in about O(log n). The index of a feature space is kept per process and *grown*
when the pool grows: rows already in it (known by a hash of their bytes) are not added again, so a
training after a few new items adds a few rows instead of rebuilding. Small pools (below
:data:`EXACT_BELOW` rows) use an exact flat index: no approximation where it costs nothing.

A large pool's index is *shared*: while :func:`kept_in` names a folder (training names the task's
``Preprocess/neighbours``), the index of each feature space is read from there, grown by the rows it
lacks and written back (``faiss.write_index``, under a file lock), so it is built once for the task
and every worker of the data folder, in any process, reads it instead of building its own. A
process keeps what it read until another one writes a newer index. Rows join it *as items
arrive*: :func:`index_arrivals`, called when a featurize job appends rows to the task's feature
file, adds them (a batch at a time), so a training finds the index built and adds at most the
few rows still waiting.

Chosen by measurement (docs/BENCHMARKS.md, "Neighbours"): ``faiss-cpu`` installs as a wheel and
grows in place; ``hnswlib`` has no wheel for this Python (it would
compile), ``pynndescent`` pulls numba and llvmlite and compiles at first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from labelloop.datastore import file_lock, write_bytes_atomic
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
#: Rows that arrived in a feature file wait there until this many, or this share of the rows
#: already indexed, are waiting; then they join the shared index in one write (a write replaces
#: the whole file, so the files written while a pool grows add up to 1/ARRIVALS_SHARE times
#: the final one). A training adds the rows still waiting (fewer than that share) itself.
ARRIVALS_MIN = 1_000
ARRIVALS_SHARE = 0.05
#: Feature rows wider than this are not indexed on arrival (feature maps: nobody asks for their
#: neighbours, and an index of them would be huge).
MAX_ARRIVAL_DIM = 4096
#: Rows added to an index at a time (bounds the float32 copy of the rows being added).
ADD_CHUNK = 20_000

_LOCK = threading.Lock()
_GROWING: dict[int, GrowingIndex] = {}
#: Where large pools' indexes are kept while :func:`kept_in` runs (None: in this process only).
_HOME: ContextVar[Path | None] = ContextVar("neighbours_home", default=None)
#: Shared indexes read by this process, by file, with the file's stamp when read.
_SHARED: dict[Path, tuple[GrowingIndex, tuple[int, int] | None]] = {}
_KEY_BYTES = 12


def _faiss() -> Any:
    import faiss  # imported on first use: light processes never load it

    # One thread: OpenMP threads spin, and on a machine the API shares they starve it.
    faiss.omp_set_num_threads(1)
    return faiss


def _row_keys(X: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(row.tobytes(), digest_size=_KEY_BYTES).digest() for row in X]


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

    def write(self, path: Path) -> None:
        """The index and its rows' keys (in position order), each replaced whole."""
        faiss = _faiss()
        with self.lock:
            tmp = path.with_name(path.name + ".tmp")
            faiss.write_index(self.index, str(tmp))
            keys = b"".join(self.positions)  # positions were handed out in insertion order
        os.replace(tmp, path)
        keys_path = path.with_suffix(".keys")
        keys_path.with_name(keys_path.name + ".tmp").write_bytes(keys)
        os.replace(keys_path.with_name(keys_path.name + ".tmp"), keys_path)

    @classmethod
    def read(cls, path: Path, dim: int) -> GrowingIndex:
        grown = cls(dim)
        grown.index = _faiss().read_index(str(path))
        grown.index.hnsw.efSearch = EF_SEARCH
        keys = path.with_suffix(".keys").read_bytes()
        grown.positions = {
            keys[i : i + _KEY_BYTES]: p for p, i in enumerate(range(0, len(keys), _KEY_BYTES))
        }
        if len(grown.positions) != grown.index.ntotal:  # a torn pair: build again
            return cls(dim)
        return grown


@contextlib.contextmanager
def kept_in(folder: Path) -> Iterator[None]:
    """Large pools' indexes are read from, and written to, ``folder`` while the block runs."""
    token = _HOME.set(folder)
    try:
        yield
    finally:
        _HOME.reset(token)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def _shared(folder: Path, X: np.ndarray) -> tuple[GrowingIndex, np.ndarray]:
    """The folder's index of ``X``'s feature space, grown by the rows it lacks (written back), and
    each row's position in it. One process at a time reads and grows it (a file lock). A pool
    that is a small part of the shared index (a sample of it, or rows of a former featurizer of
    the same width) gets an index of this process instead: the shared one is never replaced by a
    smaller one."""
    dim = X.shape[1]
    path = folder / f"hnsw-{dim}d.faiss"
    with file_lock(path.with_suffix(".lock")):
        stamp = _stamp(path)
        with _LOCK:
            held = _SHARED.get(path)
        if held is not None and held[1] == stamp:
            grow = held[0]
        else:  # another process wrote it since (or none was read here yet)
            grow = GrowingIndex.read(path, dim) if stamp is not None else GrowingIndex(dim)
        if grow.index.ntotal <= MAX_SHARE * len(X):
            before = grow.index.ntotal
            pos = grow.add(X)
            if grow.index.ntotal != before or stamp is None:
                grow.write(path)
                stamp = _stamp(path)
            with _LOCK:
                _SHARED[path] = (grow, stamp)
            return grow, pos
        with _LOCK:
            _SHARED[path] = (grow, stamp)  # read once, kept for the next pool that fits it
    own = _own(dim, len(X))  # built outside the lock: nobody else waits for it
    return own, own.add(X)


class RowSource(Protocol):
    """Where arrived rows are read from: a task's feature file (``datastore.FeatureRows``)."""

    def count(self) -> int: ...

    def range(self, start: int, stop: int) -> np.ndarray: ...


def _read_meta(path: Path) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (FileNotFoundError, ValueError, AttributeError):
        return {}


def index_arrivals(folder: Path, source: str, rows: RowSource) -> int:
    """Rows that arrived in the feature file ``source`` join ``folder``'s shared index of their
    width, so that a training finds the index built; the number of rows added.

    The index records (``hnsw-<dim>d.json``) how many rows of each file it holds. Below
    :data:`EXACT_BELOW` rows nothing is built (small pools are searched exactly); then the first
    call builds it from the whole file, and later calls add the rows that arrived since, once
    enough are waiting (:data:`ARRIVALS_MIN`, :data:`ARRIVALS_SHARE`). Under the index's file
    lock; the index is not kept in this process (a data worker would hold it for nothing).
    """
    n = rows.count()
    if n < EXACT_BELOW:
        return 0
    dim = int(rows.range(0, 1).shape[1])
    if dim > MAX_ARRIVAL_DIM:
        return 0
    path = folder / f"hnsw-{dim}d.faiss"
    meta = path.with_suffix(".json")
    done = _read_meta(meta).get(source, 0)
    if path.exists() and n - done < max(ARRIVALS_MIN, ARRIVALS_SHARE * done):
        return 0  # the usual case, decided without waiting for the lock
    with file_lock(path.with_suffix(".lock")):
        done = _read_meta(meta).get(source, 0)
        stamp = _stamp(path)
        waiting = n - done
        if stamp is not None and waiting < max(ARRIVALS_MIN, ARRIVALS_SHARE * done):
            return 0
        grow = GrowingIndex.read(path, dim) if stamp is not None else GrowingIndex(dim)
        if grow.index.ntotal < done:  # a torn index was dropped: this file's rows again
            done = 0
        before = int(grow.index.ntotal)
        for start in range(done, n, ADD_CHUNK):
            grow.add(np.ascontiguousarray(rows.range(start, min(n, start + ADD_CHUNK)), np.float32))
        grow.write(path)
        held = _read_meta(meta)
        held[source] = n
        write_bytes_atomic(meta, json.dumps(held).encode(), durable=False)
        with _LOCK:
            _SHARED.pop(path, None)
        return int(grow.index.ntotal) - before


def _own(dim: int, n: int) -> GrowingIndex:
    """This process's index of a feature space, afresh when it holds mostly other pools' rows."""
    grow = _growing(dim)
    if grow.index.ntotal > MAX_SHARE * n:
        grow = GrowingIndex(dim)
        with _LOCK:
            _GROWING[dim] = grow
    return grow


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
        home = _HOME.get()
        if home is not None:
            grow, pos = _shared(home, X)
        else:
            grow = _own(X.shape[1], n)
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
