"""TF-IDF + linear SVM: the request path's shortcuts compute what scikit-learn computes, bit for
bit (every Label Studio ``/predict`` runs them; a pre-label must not change with them)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from labelloop.learners.base import Features
from labelloop.learners.text import (
    PoolText,
    TfidfSVM,
    append_dense,
    char_wb_grams,
    lead_words,
    tfidf_rows,
)
from tests.learners import samples
from tests.learners.test_static import AWKWARD

TEXTS = [
    *samples.SENTENCES,
    *samples.TEXTS,
    *AWKWARD,
    "  two  spaces\tand a\ttab\n",
    "What is the capital of France ? What is it ?",
    "how how how many many",
    "a",
]


def same(a: sparse.csr_matrix, b: sparse.csr_matrix) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.indices.dtype == b.indices.dtype and a.indptr.dtype == b.indptr.dtype
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


def test_char_wb_grams_are_scikit_learns() -> None:
    analyze = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5)).build_analyzer()
    one = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 1)).build_analyzer()
    for word in ["a", "ab", "abc", "abcd", "abcdefgh", "x" * 120, "中文", "ß"]:
        assert sorted(char_wb_grams(word, 2, 5)) == sorted(analyze(word))
        assert sorted(char_wb_grams(word, 1, 1)) == sorted(one(word))


@pytest.mark.parametrize("lead", [True, False])
def test_pool_text_transforms_as_scikit_learn_does(lead: bool) -> None:
    """The same matrix as each vectorizer's own ``transform``: texts it was fitted on, new
    ones, awkward ones, again from the words' cache; and for a pool so small that the
    vectorizers fall back to other settings."""
    for pool in (PoolText(TEXTS[:12], lead), PoolText(["", "?"], lead)):
        for texts in (TEXTS, TEXTS[12:], TEXTS, [""]):
            expected = [
                v.transform(lead_words(texts) if kind == "lead" else list(texts))
                for kind, v in pool.vectorizers
            ]
            same(sparse.hstack(expected).tocsr(), pool.transform(texts))
        assert pool.grams["chars"]


def test_other_vectorizers_are_transformed_by_scikit_learn() -> None:
    binary = TfidfVectorizer(binary=True).fit(TEXTS)
    same(binary.transform(TEXTS), tfidf_rows(binary, TEXTS, {}))
    lower = TfidfVectorizer(analyzer="char_wb", lowercase=False, sublinear_tf=True).fit(TEXTS)
    grams: dict[str, tuple[int, ...]] = {}
    same(lower.transform(TEXTS), tfidf_rows(lower, TEXTS, grams))
    assert "Paris" in grams and "paris" not in grams


def test_dense_columns_are_appended_as_scipy_appends_them() -> None:
    rng = np.random.default_rng(0)
    m = sparse.random(9, 40, density=0.2, format="csr", random_state=1)
    d = rng.standard_normal((9, 5)).astype(np.float32)
    same(sparse.hstack([m, sparse.csr_matrix(d)]).tocsr(), append_dense(m, d))
    d[3] = 0.0  # a text without word pieces: scipy leaves its zeros out
    same(sparse.hstack([m, sparse.csr_matrix(d)]).tocsr(), append_dense(m, d))
    empty = sparse.csr_matrix((9, 40))
    same(sparse.hstack([empty, sparse.csr_matrix(d)]).tocsr(), append_dense(empty, d))


@pytest.mark.parametrize("labels", [["sport", "food"], ["sport", "food", "other"]])
def test_scores_are_the_svms_decision_function(labels: list[str]) -> None:
    y = np.zeros((len(samples.TEXTS), len(labels)))
    y[np.arange(len(samples.TEXTS)), [labels.index(lab[0]) for lab in samples.LABELS]] = 1
    y[-1] = np.eye(len(labels))[-1]
    learner = TfidfSVM(labels, embeddings=False).fit(Features({"text": samples.TEXTS}), y)
    m = learner._matrix(Features({"text": TEXTS}))
    np.testing.assert_array_equal(learner._decision(m), learner.model_.decision_function(m))
