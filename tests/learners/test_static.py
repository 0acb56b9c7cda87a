"""Static token embeddings: a text's vector is its own, the featurizer is an identity of its own
(a model keeps what it was trained on), and the table is built once and whole."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labelloop.kinds.classification import indicator
from labelloop.learners import learner_by_name, sentence, static
from labelloop.learners.base import Features, Learner, featurizer_from_record
from labelloop.learners.text import (
    MINILM_VERSIONS,
    MiniLMFeaturizer,
    StaticFeaturizer,
    TfidfSVM,
)
from labelloop.loop.features import ItemRef
from labelloop.loop.features import featurize as featurize_items
from labelloop.runtime import Runtime
from tests.learners import samples

SENTENCES = [*samples.SENTENCES, ""]  # and the empty text
TEXTS, LABELS = samples.TEXTS, samples.LABELS


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    """The shipped table's vectors (built once in the tests' shared encoder folder)."""
    return static.encode(SENTENCES)


def featurize(learner: Learner, raws: list[bytes]) -> Features:
    return Features({f.view: f.transform(raws) for f in learner.featurizers()})


def test_a_texts_vector_is_its_own_whatever_it_is_encoded_with(vectors: np.ndarray) -> None:
    dim = static.table().shape[1]
    assert vectors.dtype == np.float32 and vectors.shape == (len(SENTENCES), 2 * dim)
    for half in (vectors[:, :dim], vectors[:, dim:]):  # the whole text, its first words
        norms = np.linalg.norm(half, axis=1)
        np.testing.assert_allclose(norms[:-1], 1.0, atol=1e-5)
        assert norms[-1] == 0.0  # a text without word pieces
    # The second half is the vector of the first words alone.
    first = [" ".join(t.split()[: static.LEAD]) for t in SENTENCES]
    np.testing.assert_allclose(vectors[:, dim:], static.encode(first, lead=0), atol=1e-6)
    again = static.encode(list(reversed(SENTENCES)))[::-1]
    np.testing.assert_array_equal(again, vectors)
    alone = np.vstack([static.encode([t]) for t in SENTENCES])
    np.testing.assert_array_equal(alone, vectors)
    # Another encoder over the same table (another process) gives the same bits.
    twin = static.StaticEncoder(np.array(static.table()), static.LEAD).encode(SENTENCES)
    np.testing.assert_array_equal(twin, vectors)


def test_static_vectors_keep_what_the_encoder_says_about_words() -> None:
    """A word is nearer its synonym than an unrelated word: the encoder's knowledge survives."""
    for word, synonym, other in [
        ("city", "town", "banana"),
        ("doctor", "physician", "river"),
        ("car", "automobile", "poem"),
    ]:
        v = static.encode([word, synonym, other], lead=0)
        assert v[0] @ v[1] > 0.4 > v[0] @ v[2] + 0.3, (word, v[0] @ v[1], v[0] @ v[2])


def test_the_static_featurizer_is_an_identity_of_its_own(tmp_path: Path) -> None:
    fz = StaticFeaturizer()
    assert fz.version not in MINILM_VERSIONS.values()
    assert static.RECIPE.key() in fz.version and f"static{static.TABLE_FORMAT}" in fz.version
    again = featurizer_from_record(json.loads(json.dumps(fz.describe())))
    assert isinstance(again, StaticFeaturizer) and again.version == fz.version
    assert again.recipe == static.RECIPE and again.lead == static.LEAD
    # A model recorded with another recipe reads that recipe's table, not the shipped one.
    other = StaticFeaturizer({**dataclasses.asdict(static.RECIPE), "dims": 7}, lead=0)
    kept = featurizer_from_record(json.loads(json.dumps(other.describe())))
    assert isinstance(kept, StaticFeaturizer) and (kept.recipe.dims, kept.lead) == (7, 0)
    assert kept.version != fz.version and static.table_path(kept.recipe) != static.table_path()

    # New models read the static embeddings; a task may ask for the full encoder.
    assert [f.name for f in TfidfSVM(["a", "b"]).featurizers()] == ["text", "minilm-static"]
    assert [f.name for f in TfidfSVM(["a", "b"], encoder="static").featurizers()] == [
        "text",
        "minilm-static",
    ]
    full = TfidfSVM(["a", "b"], encoder="onnx-int8").featurizers()
    assert isinstance(full[1], MiniLMFeaturizer) and full[1].runtime == "onnx-int8"

    # A model trained on the full encoder (the default before) keeps it when loaded, though its
    # recorded parameters say "auto", which now means the static embeddings.
    raws = [t.encode() for t in TEXTS]
    Y = indicator(LABELS, ["sport", "food"])
    old = TfidfSVM(["sport", "food"], encoder="onnx-int8")
    old.fit(featurize(old, raws), Y)
    old.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "learner.json").read_text())
    meta["params"]["encoder"] = "auto"
    (tmp_path / "m" / "learner.json").write_text(json.dumps(meta))
    loaded = learner_by_name("tfidf-svm").load(tmp_path / "m")
    assert [f.describe() for f in loaded.featurizers()] == [f.describe() for f in old.featurizers()]
    np.testing.assert_array_equal(
        loaded.predict_proba(featurize(loaded, raws)), old.predict_proba(featurize(old, raws))
    )
    # Its clone (a retraining of that version) keeps them too.
    assert [f.name for f in loaded.clone().featurizers()] == ["text", "minilm"]


def test_a_static_model_learns_and_reads_back_the_same_vectors(tmp_path: Path) -> None:
    raws = [t.encode() for t in TEXTS]
    Y = indicator(LABELS, ["sport", "food"])
    learner = TfidfSVM(["sport", "food"])
    X = featurize(learner, raws)
    assert X.array("static").shape == (len(TEXTS), static.encoder().dim)
    learner.fit(X, Y)
    learner.save(tmp_path / "m")
    loaded = learner_by_name("tfidf-svm").load(tmp_path / "m")
    record = json.loads((tmp_path / "m" / "learner.json").read_text())["featurizers"]
    assert [r["name"] for r in record] == ["text", "minilm-static"]
    np.testing.assert_array_equal(
        loaded.predict_proba(featurize(loaded, raws)), learner.predict_proba(X)
    )


def test_items_get_static_vectors_computed_not_stored(rt: Runtime) -> None:
    learner = TfidfSVM(["sport", "food"])
    items = [ItemRef(i + 1, t) for i, t in enumerate(TEXTS)]
    batch = featurize_items(rt, 1, "text-classification", learner, items)
    assert batch.ok == list(range(len(TEXTS)))
    np.testing.assert_array_equal(batch.features.array("static"), static.encode(TEXTS))
    assert batch.features.texts("text") == TEXTS
    version = StaticFeaturizer().version
    assert not list(rt.folder(1).preprocess.rglob(f"*{version}*"))  # nothing written


# -- the table ------------------------------------------------------------------------------------


def fake_pieces(calls: list[str]) -> Any:
    def encode_pieces(pooling: str = "mean") -> np.ndarray:
        calls.append(pooling)
        vocab = static._tokenizer().get_vocab_size()
        return np.random.default_rng(0).normal(size=(vocab, 8)).astype(np.float32)

    return encode_pieces


def test_concurrent_builders_build_once_and_a_failed_build_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(static, "encode_pieces", fake_pieces(calls))
    monkeypatch.setattr(sentence, "_CACHE_DIR", tmp_path / "a")
    started = threading.Barrier(4)
    tables: list[np.ndarray] = []

    def one() -> None:
        started.wait()
        tables.append(np.array(static.table()))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["mean"]
    assert len(tables) == 4 and all(np.array_equal(t, tables[0]) for t in tables)
    path = static.table_path()
    assert path.parent == tmp_path / "a" and np.array_equal(np.load(path), tables[0])
    # Built again elsewhere from the same outputs: the same bits (the recipe is deterministic).
    monkeypatch.setattr(sentence, "_CACHE_DIR", tmp_path / "again")
    np.testing.assert_array_equal(np.array(static.table()), tables[0])

    def broken(pooling: str = "mean") -> np.ndarray:
        raise RuntimeError("killed while encoding")

    monkeypatch.setattr(static, "encode_pieces", broken)
    monkeypatch.setattr(sentence, "_CACHE_DIR", tmp_path / "b")
    with pytest.raises(RuntimeError):
        static.table()
    assert [p.suffix for p in (tmp_path / "b").iterdir()] == [".lock"]

    def half_written(tmp: Path) -> None:
        tmp.write_bytes(b"\x93NUMPY half a tab")
        raise OSError("disk full")

    monkeypatch.setattr(static, "encode_pieces", fake_pieces(calls))
    real_write = sentence._write_whole
    monkeypatch.setattr(
        sentence, "_write_whole", lambda dest, write: real_write(dest, half_written)
    )
    with pytest.raises(OSError):
        static.table()
    assert [p.suffix for p in (tmp_path / "b").iterdir()] == [".lock"]  # no half file
    monkeypatch.setattr(sentence, "_write_whole", real_write)
    assert static.table().shape == tables[0].shape  # the next call builds it


def test_the_recipe_is_deterministic_and_zeroes_the_special_pieces() -> None:
    raw = np.random.default_rng(1).normal(size=(3000, 16)).astype(np.float32)
    special = [0, 100, 101]
    for recipe in (static.RECIPE, static.Recipe(dims=8), static.Recipe(weighting="uniform")):
        a, b = static.finish(raw, recipe, special), static.finish(raw.copy(), recipe, special)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and a.flags.c_contiguous
        assert not a[special].any() and a[200:].any()
        assert a.shape == (3000, recipe.dims or 16)
    w = static.piece_weights(3000, static.RECIPE)
    assert w[static.FIRST_WORD] < w[2500] < 1.0  # "the" weighs less than a rarer piece


#: Texts whose words test what the tokenizer does inside a word: accents and combining marks,
#: Greek final sigma, dotted capital I, CJK characters, a special token inside a word, control
#: and zero-width characters, the replacement character, emoji, a word past WordPiece's 100
#: characters, punctuation.
AWKWARD = [
    "café naïve résumé e\u0301 a\u0308b",
    "ΣΑΣ ΟΔΟΣ σΣ",
    "\u0130stanbul \u0131i \u00df \ufb01ne",
    "中文 字日本語 abc中def",
    "foo[CLS]bar [SEP]x [UNK]",
    "zero\u200bwidth soft\u00adhyphen nul\x00l bell\x07 rep\ufffdl",
    "👍🏽 ok😀",
    "x" * 150,
    "u.s.a. don't (a) [b] {c} #1 $2.50",
    "",
]


def test_a_texts_pieces_are_its_words_pieces_one_after_the_other() -> None:
    """The pieces of a text of single-spaced words, taken word by word from the cache, are the
    pieces the tokenizer gives the whole text; other texts (several spaces, tabs, new lines)
    go to the tokenizer whole. So the vectors are the same either way."""
    enc = static.StaticEncoder(static.table(), static.LEAD)
    tok = enc.tokenizer
    raw = [*SENTENCES, *AWKWARD, "  two  spaces\tand a\ttab\n", "\u3000ideographic\xa0space"]
    plain = [" ".join(t.split()) for t in raw]

    def whole(texts: list[str]) -> list[list[int]]:
        encoded = tok.encode_batch(texts, add_special_tokens=False)
        ends = [
            static._lead_end(t, e.offsets, static.LEAD) for t, e in zip(texts, encoded, strict=True)
        ]
        return [e.ids for e in encoded] + [e.ids[:n] for e, n in zip(encoded, ends, strict=True)]

    for texts in (plain, raw, plain):  # the second plain pass reads the words from the cache
        assert enc.pieces(texts) == whole(texts)
    assert enc._words and all(" " not in w for w in enc._words)
    np.testing.assert_array_equal(enc.encode(plain), static.encode(plain))
