"""Image classification without pretrained weights: pixels, the pool's graph, and an RBF SVM."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.semi_supervised import LabelSpreading
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

MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding


class PixelFeaturizer(Featurizer):
    """Grey-level pixels of the image resized to ``size`` x ``size``, scaled to [0, 1]."""

    view = "pixels"

    def __init__(self, size: int = 16) -> None:
        self.size = int(size)

    @property
    def version(self) -> str:
        return f"pixels-L-{self.size}-v1"

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


class PixelSVM(Learner):
    """Label spreading over the task's whole pool blended with an RBF SVM on pixels.

    With few labels the graph of the unlabelled pool carries most of the signal; as labels grow the
    SVM takes over. Multi-label tasks use one probabilistic SVM per label.
    """

    name = "pixel-svm"

    def featurizers(self) -> list[Featurizer]:
        return [PixelFeaturizer(self.params.get("image_size", 16))]

    def _x(self, X: Features) -> np.ndarray:
        return X.array(PixelFeaturizer.view).astype(np.float64)

    def fit(
        self, X: Features, Y: np.ndarray, pool: Features | None = None, init: Learner | None = None
    ) -> Self:
        x = self._x(X)
        C = float(self.params.get("C", 10.0))
        if self.multi_label:
            self.model_: Any = BinaryRelevance(
                SVC(C=C, gamma="scale", probability=True, random_state=0)
            ).fit(x, Y)
            return self
        y = indicator_to_classes(Y)
        self.seen_ = np.unique(y)
        if len(self.seen_) < 2:
            self.model_ = None
            return self
        self.model_ = SVC(C=C, gamma="scale", probability=True, random_state=0).fit(x, y)
        self.spread_ = None
        if pool is not None and len(pool) > len(x):
            px = self._x(pool)
            allx = np.vstack([x, px])
            ally = np.concatenate([y, np.full(len(px), -1)])
            k = int(self.params.get("k", 7))
            self.spread_ = LabelSpreading(kernel="knn", n_neighbors=k, alpha=0.2, max_iter=60).fit(
                allx, ally
            )
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        x = self._x(X)
        n = len(self.labels)
        if self.multi_label:
            return self.model_.predict_proba(x, len(x))  # type: ignore[no-any-return]
        if self.model_ is None:
            out = np.zeros((len(x), n))
            out[:, self.seen_] = 1.0
            return out
        p = spread_columns(self.model_.predict_proba(x), self.seen_, n)
        if self.spread_ is not None:
            q = spread_columns(self.spread_.predict_proba(x), self.spread_.classes_, n)
            q = np.nan_to_num(q, nan=0.0)
            p = 0.5 * p + 0.5 * q
        return p

    def _state(self) -> Any:
        if self.multi_label:
            return {"model": self.model_}
        return {"model": self.model_, "seen": self.seen_, "spread": self.spread_}

    def _restore(self, state: Any) -> None:
        self.model_ = state["model"]
        if not self.multi_label:
            self.seen_ = state["seen"]
            self.spread_ = state["spread"]
