"""Image classification without pretrained weights: the pool's graph teaches an RBF SVM.

Measured on the digits stream (docs/BENCHMARKS.md): label spreading over a k-nearest-neighbour
graph of the pool (what a training hands over: the labelled items and a bounded sample of the
unlabelled ones, ``train_pool_sample``) makes far fewer mistakes than any model trained on labels
alone while labels are few; an RBF SVM is better once they are many. ``PoolSVM`` gets both: it
spreads the labels over the pool, takes the confident spread labels as pseudo-labels next to the human ones,
and fits the SVM on the union. Early on the SVM mostly copies the graph; as human labels replace
pseudo-labels, its own judgement takes over, with no schedule to tune.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from labelloop.errors import FetchError
from labelloop.learners.base import (
    Features,
    Featurizer,
    Learner,
    indicator_to_classes,
    spread_columns,
)
from labelloop.learners.multilabel import BinaryRelevance
from labelloop.learners.neighbours import knn_graph, nearest
from labelloop.learners.poolcache import cached, fingerprint_array

MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding


class PixelFeaturizer(Featurizer):
    """Grey-level pixels of the image resized to ``size`` x ``size``, scaled to [0, 1]."""

    name = "pixels"
    view = "pixels"

    def __init__(self, size: int = 16) -> None:
        self.size = int(size)

    @property
    def version(self) -> str:
        return f"pixels-L-{self.size}-v1"

    def config(self) -> dict[str, Any]:
        return {"size": self.size}

    @classmethod
    def legacy(cls, version: str) -> PixelFeaturizer | None:
        m = re.fullmatch(r"pixels-L-(\d+)-v1", version)
        return cls(int(m.group(1))) if m else None

    def transform_one(self, raw: bytes) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(raw)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise FetchError(f"image of {img.width}x{img.height} pixels is too large")
                grey = img.convert("L")
                if grey.size != (self.size, self.size):
                    grey = grey.resize((self.size, self.size), Image.Resampling.BILINEAR)
                return np.asarray(grey, dtype=np.float32).ravel() / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise FetchError(f"cannot decode image: {exc}") from None

    def transform(self, raws: Sequence[bytes]) -> np.ndarray:
        if not raws:
            return np.zeros((0, self.size * self.size), dtype=np.float32)
        return np.vstack([self.transform_one(r) for r in raws])


class PoolGraph:
    """Symmetric, unweighted k-nearest-neighbour graph of the pool, normalised D^-1/2 W D^-1/2."""

    def __init__(self, nodes: np.ndarray, k: int) -> None:
        W = knn_graph(nodes, k)
        d = 1.0 / np.sqrt(np.asarray(W.sum(axis=1)).ravel())
        self.S = (sparse.diags(d) @ W @ sparse.diags(d)).tocsr()
        self.index = {row.tobytes(): i for i, row in enumerate(nodes)}


def spread(
    S: sparse.csr_matrix,
    labelled: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    alpha: float,
    iterations: int,
) -> np.ndarray:
    """Label spreading with equal total mass per class; rows are class distributions."""
    Y0 = np.zeros((S.shape[0], n_classes))
    Y0[labelled, y] = 1.0
    F = Y0.copy()
    for _ in range(iterations):
        F = alpha * (S @ F) + (1.0 - alpha) * Y0
    F /= F.sum(axis=0, keepdims=True) + 1e-12
    F /= F.sum(axis=1, keepdims=True) + 1e-12
    return F


class GraphSVM(Learner):
    """Label spreading over the task's pool, confident spread labels as pseudo-labels, RBF SVM.

    Scores: the SVM decides the label; how far label spreading agrees says how sure it is
    (``0.5 * one-hot(SVM) + 0.5 * spread distribution``), which ranks items for review and
    auto-labelling far better than SVM margins do. Multi-label tasks use one logistic regression
    per label. Subclasses say which view the graph and the SVM read (:meth:`_x`).
    """

    def __init__(
        self,
        labels: Sequence[str],
        multi_label: bool = False,
        *,
        C: float | None = None,
        k: int = 5,
        alpha: float = 0.9,
        iterations: int = 40,
        pseudo_threshold: float = 0.7,
        gamma: float | None = None,
        max_pool: int = 20_000,
    ) -> None:
        super().__init__(labels, multi_label)
        self.C = C
        self.k = k
        self.alpha = alpha
        self.iterations = iterations
        self.pseudo_threshold = pseudo_threshold
        self.gamma = gamma
        self.max_pool = max_pool

    def _x(self, X: Features) -> np.ndarray:
        raise NotImplementedError

    def fit(
        self, X: Features, Y: np.ndarray, pool: Features | None = None, init: Learner | None = None
    ) -> Self:
        x = self._x(X)
        if self.multi_label:
            C = 1.0 if self.C is None else float(self.C)
            self.model_: Any = BinaryRelevance(LogisticRegression(C=C, max_iter=2000)).fit(x, Y)
            return self
        y = indicator_to_classes(Y)
        self.seen_ = np.unique(y)
        nodes = x if pool is None else self._x(pool)
        if len(nodes) > self.max_pool:
            nodes = nodes[np.linspace(0, len(nodes) - 1, self.max_pool).astype(int)]
        index = {row.tobytes(): i for i, row in enumerate(nodes)}
        missing = [i for i, row in enumerate(x) if row.tobytes() not in index]
        if missing:
            nodes = np.vstack([nodes, x[missing]])
        k = int(self.k)
        graph = cached(("pool-graph", fingerprint_array(nodes), k), lambda: PoolGraph(nodes, k))
        labelled = np.array([graph.index[row.tobytes()] for row in x])
        cls = np.searchsorted(self.seen_, y)
        dist = spread(
            graph.S, labelled, cls, len(self.seen_), float(self.alpha), int(self.iterations)
        )
        target = dist.argmax(axis=1)
        use = dist.max(axis=1) >= float(self.pseudo_threshold)
        target[labelled] = cls
        use[labelled] = True
        self.nodes_, self.spread_ = nodes, dist.astype(np.float32)
        self.svm_: SVC | None = None
        if len(np.unique(target[use])) >= 2:
            gamma = self.gamma or 1.0 / (nodes.shape[1] * float(nodes.var()) + 1e-12)
            C = 10.0 if self.C is None else float(self.C)
            self.svm_ = SVC(kernel="rbf", gamma=gamma, C=C)
            self.svm_.fit(nodes[use], target[use])
        self._index = graph.index
        return self

    def _spread_of(self, x: np.ndarray) -> np.ndarray:
        """Spread distribution of rows: their own if they are pool items, else their neighbours'."""
        index = getattr(self, "_index", None)
        if index is None:
            index = self._index = {row.tobytes(): i for i, row in enumerate(self.nodes_)}
        out = np.empty((len(x), self.spread_.shape[1]))
        unknown = []
        for i, row in enumerate(x):
            j = index.get(row.tobytes())
            if j is None:
                unknown.append(i)
            else:
                out[i] = self.spread_[j]
        if unknown:
            neighbours = nearest(self.nodes_, x[unknown], int(self.k))
            out[unknown] = self.spread_[neighbours].mean(axis=1)
        return out

    def predict_proba(self, X: Features) -> np.ndarray:
        x = self._x(X)
        n = len(self.labels)
        if self.multi_label:
            return self.model_.predict_proba(x, len(x))  # type: ignore[no-any-return]
        if len(x) == 0:
            return np.zeros((0, n))
        q = self._spread_of(x)
        if self.svm_ is None:
            p = q
        else:
            decided = self.svm_.predict(x).astype(int)  # indices into seen_
            p = 0.5 * q
            p[np.arange(len(x)), decided] += 0.5
        return spread_columns(p, self.seen_, n)

    def _state(self) -> Any:
        if self.multi_label:
            return {"model": self.model_}
        return {"seen": self.seen_, "svm": self.svm_, "nodes": self.nodes_, "spread": self.spread_}

    def _restore(self, state: Any) -> None:
        if self.multi_label:
            self.model_ = state["model"]
            return
        self.seen_, self.svm_ = state["seen"], state["svm"]
        self.nodes_, self.spread_ = state["nodes"], state["spread"]


class PoolSVM(GraphSVM):
    """:class:`GraphSVM` on grey-level pixels: the best learner on digits (docs/BENCHMARKS.md)."""

    name = "pool-svm"

    def __init__(
        self,
        labels: Sequence[str],
        multi_label: bool = False,
        *,
        image_size: int = 16,
        C: float | None = None,
        k: int = 5,
        alpha: float = 0.9,
        iterations: int = 40,
        pseudo_threshold: float = 0.7,
        gamma: float | None = None,
        max_pool: int = 20_000,
    ) -> None:
        super().__init__(
            labels,
            multi_label,
            C=C,
            k=k,
            alpha=alpha,
            iterations=iterations,
            pseudo_threshold=pseudo_threshold,
            gamma=gamma,
            max_pool=max_pool,
        )
        self.image_size = image_size

    def make_featurizers(self) -> list[Featurizer]:
        return [PixelFeaturizer(self.image_size)]

    def _x(self, X: Features) -> np.ndarray:
        return np.ascontiguousarray(X.array(PixelFeaturizer.view), dtype=np.float32)
