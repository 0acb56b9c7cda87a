"""Photo learners on the embeddings of a pretrained backbone (:mod:`.backbones`).

On real photographs the pooled features of an ImageNet-pretrained network separate classes that
grey pixels cannot (docs/BENCHMARKS.md). Two learners read them:

- ``embedding-logreg``: a linear head (multinomial logistic regression) on the embeddings,
  standardised with the statistics of the task's whole pool;
- ``embedding-spread``: the pool's label spreading over embedding neighbours with an RBF SVM on top,
  what ``pool-svm`` does on pixels (:class:`~labelloop.learners.image.GraphSVM`).

Both leave the backbone untouched; ``finetune`` (:mod:`.finetune`) trains its last blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from labelloop.errors import InvalidInput
from labelloop.learners import backbones
from labelloop.learners.backbones import BackboneSpec
from labelloop.learners.base import (
    Features,
    Featurizer,
    Learner,
    indicator_to_classes,
    spread_columns,
)
from labelloop.learners.image import GraphSVM
from labelloop.learners.multilabel import BinaryRelevance
from labelloop.learners.poolcache import cached, fingerprint_array

BackboneParam = dict[str, Any] | str | None


class EmbeddingFeaturizer(Featurizer):
    """The backbone's pooled features of an image (1,280 numbers for EfficientNet-Lite0)."""

    name = "backbone"
    view = "embedding"

    def __init__(self, **spec: Any) -> None:
        self.spec = backbones.resolve(BackboneSpec.model_validate(spec))

    @property
    def version(self) -> str:
        return f"embed-{self.spec.key()}-v1"

    def config(self) -> dict[str, Any]:
        return self.spec.model_dump(mode="json")

    @classmethod
    def missing_for(cls, config: dict[str, Any]) -> list[str]:
        return backbones.missing_packages(BackboneSpec.model_validate(config))

    def transform(self, raws: Sequence[bytes]) -> np.ndarray:
        size = self.spec.input_size
        if not raws:
            return np.zeros((0, 0), dtype=np.float32)
        images = np.stack([backbones.decode_rgb(r, size) for r in raws])
        return backbones.get(self.spec).embed(images)


def backbone_featurizer(backbone: BackboneParam) -> EmbeddingFeaturizer:
    """The featurizer for a learner's ``backbone`` parameter (None: the server's backbone)."""
    spec = backbones.default_spec() if backbone is None else backbones.parse(backbone)
    if spec is None:
        raise InvalidInput(
            "no image backbone is configured on this server (LABELLOOP_IMAGE_BACKBONE=none); "
            "name one with the learner parameter 'backbone' or choose a pixel learner"
        )
    return EmbeddingFeaturizer(**spec.model_dump())


class PoolScaler:
    """Mean and standard deviation of the pool's embeddings (what unlabelled photos teach)."""

    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-6

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = (x - self.mean) / self.scale
        return out


class EmbeddingLogReg(Learner):
    """Logistic regression on pool-standardised backbone embeddings (a linear head).

    ``C`` is the inverse regularisation strength; ``backbone`` names a backbone (default: the
    server's). Multi-label tasks use one logistic regression per label.
    """

    name = "embedding-logreg"

    def __init__(
        self,
        labels: Sequence[str],
        multi_label: bool = False,
        *,
        C: float = 1.0,
        max_iter: int = 100,
        backbone: BackboneParam = None,
    ) -> None:
        super().__init__(labels, multi_label)
        self.C = C
        self.max_iter = max_iter
        self.backbone = backbone

    def make_featurizers(self) -> list[Featurizer]:
        return [backbone_featurizer(self.backbone)]

    def _raw(self, X: Features) -> np.ndarray:
        return np.asarray(X.array(EmbeddingFeaturizer.view), dtype=np.float32)

    def fit(
        self, X: Features, Y: np.ndarray, pool: Features | None = None, init: Learner | None = None
    ) -> Self:
        x = self._raw(X)
        nodes = x if pool is None or len(pool) == 0 else self._raw(pool)
        self.scaler_ = cached(("pool-scaler", fingerprint_array(nodes)), lambda: PoolScaler(nodes))
        z = self.scaler_(x)
        head = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter), tol=1e-3)
        # A small problem: one BLAS thread is faster than several waiting for each other
        # (measured: 16 s against 0.2 s per fit on a loaded two-core machine).
        with threadpool_limits(limits=1, user_api="blas"):
            if self.multi_label:
                self.model_: Any = BinaryRelevance(head).fit(z, Y)
                return self
            y = indicator_to_classes(Y)
            self.seen_ = np.unique(y)
            self.model_ = None if len(self.seen_) < 2 else head.fit(z, y)
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        z = self.scaler_(self._raw(X))
        n = len(self.labels)
        if self.multi_label:
            return self.model_.predict_proba(z, len(z))  # type: ignore[no-any-return]
        if self.model_ is None:
            out = np.zeros((len(z), n))
            out[:, self.seen_] = 1.0
            return out
        p = self.model_.predict_proba(z)  # columns follow model_.classes_ == seen_ indices
        return spread_columns(p, self.seen_, n)

    def _state(self) -> Any:
        return {"scaler": self.scaler_, "model": self.model_, "seen": getattr(self, "seen_", None)}

    def _restore(self, state: Any) -> None:
        self.scaler_, self.model_, self.seen_ = state["scaler"], state["model"], state["seen"]


class EmbeddingSpread(GraphSVM):
    """Label spreading over the pool's embedding neighbours, then an RBF SVM (pool-svm on photos).

    Embeddings are scaled to unit length, so neighbours are by cosine similarity.
    """

    name = "embedding-spread"

    def __init__(
        self,
        labels: Sequence[str],
        multi_label: bool = False,
        *,
        backbone: BackboneParam = None,
        C: float | None = None,
        k: int = 10,
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
        self.backbone = backbone

    def make_featurizers(self) -> list[Featurizer]:
        return [backbone_featurizer(self.backbone)]

    def _x(self, X: Features) -> np.ndarray:
        x = np.asarray(X.array(EmbeddingFeaturizer.view), dtype=np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x / np.where(norms == 0, 1.0, norms))
