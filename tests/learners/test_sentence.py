"""The sentence encoder's runtimes: the ONNX int8 graph against the PyTorch original, and which
vectors a saved model reads."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labelloop.errors import Unavailable
from labelloop.kinds.classification import indicator
from labelloop.learners import learner_by_name, sentence
from labelloop.learners.base import Features, Learner, featurizer_from_record
from labelloop.learners.text import MiniLMFeaturizer, TfidfSVM
from labelloop.loop.cache import FEATURES
from labelloop.loop.features import ItemRef
from labelloop.loop.features import featurize as featurize_items
from labelloop.runtime import Runtime
from tests.learners.samples import LABELS, SENTENCES, TEXTS


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    """The PyTorch original's vectors (the model loads once for the module)."""
    return sentence.encode(SENTENCES, "torch")


@pytest.fixture(scope="module")
def int8() -> np.ndarray:
    return sentence.encode(SENTENCES, "onnx-int8")


def featurize(learner: Learner, raws: list[bytes]) -> Features:
    return Features({f.view: f.transform(raws) for f in learner.featurizers()})


def test_int8_vectors_are_the_originals_within_cosine_0_98(
    original: np.ndarray, int8: np.ndarray
) -> None:
    assert int8.shape == original.shape == (len(SENTENCES), sentence.DIM)
    assert int8.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    cosine = (int8 * original).sum(axis=1)
    # ONNX Runtime's integer kernels differ by CPU: a one-word text ("hello") came to 0.988 on
    # an AVX2-only AMD EPYC and above 0.99 on other machines; sentences stay above 0.995.
    assert cosine.min() > 0.98, cosine
    assert np.median(cosine) > 0.995, cosine
    assert not np.array_equal(int8, original)  # quantised: close, not the same


def test_a_texts_vector_is_its_own_whatever_it_is_encoded_with(int8: np.ndarray) -> None:
    again = sentence.encode(list(reversed(SENTENCES)), "onnx-int8")[::-1]
    np.testing.assert_array_equal(again, int8)
    alone = np.vstack([sentence.encode([t], "onnx-int8") for t in SENTENCES])
    np.testing.assert_allclose(alone, int8, atol=1e-6)  # per-row scales: no batch-mates' range


def test_the_fp32_graph_gives_the_originals_vectors(original: np.ndarray) -> None:
    fp32 = sentence.encode(SENTENCES, "onnx")
    np.testing.assert_allclose(fp32, original, atol=1e-4)


def test_each_runtime_is_a_featurizer_identity_of_its_own() -> None:
    featurizers = [MiniLMFeaturizer(r) for r in sentence.RUNTIMES]
    assert len({f.version for f in featurizers}) == len(sentence.RUNTIMES)
    for f in featurizers:
        again = featurizer_from_record(json.loads(json.dumps(f.describe())))
        assert isinstance(again, MiniLMFeaturizer) and again.runtime == f.runtime
    # What models saved before the runtimes existed recorded: the PyTorch original.
    old = featurizer_from_record({"name": "minilm", "version": "minilm-l6-v2-v1", "config": {}})
    assert isinstance(old, MiniLMFeaturizer) and old.runtime == "torch"
    assert MiniLMFeaturizer.legacy("minilm-l6-v2-v1") is not None


def test_the_full_encoder_runs_int8_and_an_old_model_keeps_the_original(
    tmp_path: Path, original: np.ndarray
) -> None:
    raws = [t.encode() for t in TEXTS]
    Y = indicator(LABELS, ["sport", "food"])
    new = TfidfSVM(["sport", "food"], encoder="onnx-int8")
    assert [f.version for f in new.featurizers()] == ["text-utf8-v1", "minilm-l6-v2-onnx-int8-v1"]

    old = TfidfSVM(["sport", "food"], encoder="torch")
    old.fit(featurize(old, raws), Y)
    old.save(tmp_path / "m")
    # As a model saved before this change recorded it: no runtime in the configuration.
    meta = json.loads((tmp_path / "m" / "learner.json").read_text())
    meta["params"].pop("encoder")
    meta["featurizers"][1]["config"] = {}
    (tmp_path / "m" / "learner.json").write_text(json.dumps(meta))

    loaded = learner_by_name("tfidf-svm").load(tmp_path / "m")
    (minilm,) = [f for f in loaded.featurizers() if isinstance(f, MiniLMFeaturizer)]
    assert minilm.runtime == "torch" and minilm.version == "minilm-l6-v2-v1"
    X = featurize(loaded, [s.encode() for s in SENTENCES])
    np.testing.assert_allclose(X.array("minilm"), original, atol=1e-6)
    np.testing.assert_array_equal(
        loaded.predict_proba(featurize(loaded, raws)), old.predict_proba(featurize(old, raws))
    )


def test_an_int8_model_without_onnxruntime_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "onnxruntime" else real(name, *a, **k),
    )
    record = MiniLMFeaturizer("onnx-int8").describe()
    with pytest.raises(Unavailable, match="onnxruntime"):
        featurizer_from_record(record)
    featurizer_from_record(MiniLMFeaturizer("torch").describe())  # the original needs none


def test_concurrent_exporters_export_once_and_a_failed_export_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    started = threading.Barrier(4)

    def export(dest: Path) -> None:
        calls.append("fp32")
        sentence._write_whole(dest, lambda tmp: tmp.write_bytes(b"fp32 graph"))

    def quantize(src: Path, dest: Path) -> None:
        calls.append("int8")
        sentence._write_whole(dest, lambda tmp: tmp.write_bytes(src.read_bytes() + b" int8"))

    monkeypatch.setattr(sentence, "_export_fp32", export)
    monkeypatch.setattr(sentence, "_quantize", quantize)
    monkeypatch.setattr(sentence, "_CACHE_DIR", tmp_path / "a")
    paths: list[Path] = []

    def one() -> None:
        started.wait()
        paths.append(sentence.graph_path("onnx-int8"))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["fp32", "int8"]
    assert len(set(paths)) == 1 and paths[0].read_bytes() == b"fp32 graph int8"

    def broken(src: Path, dest: Path) -> None:
        def write(tmp: Path) -> Any:
            tmp.write_bytes(b"half a gra")
            raise RuntimeError("killed mid-write")

        sentence._write_whole(dest, write)

    monkeypatch.setattr(sentence, "_quantize", broken)
    monkeypatch.setattr(sentence, "_CACHE_DIR", tmp_path / "b")
    with pytest.raises(RuntimeError):
        sentence.graph_path("onnx-int8")
    assert sorted(p.suffix for p in (tmp_path / "b").iterdir()) == [".lock", ".onnx"]  # fp32 only


def test_a_text_sent_again_is_not_encoded_again(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new Label Studio task whose text the task already has reads the stored features."""
    encoded: list[str] = []
    real = sentence.encode

    def spy(texts: Sequence[str], runtime: sentence.Runtime) -> np.ndarray:
        encoded.extend(texts)
        return real(texts, runtime)

    monkeypatch.setattr(sentence, "encode", spy)
    learner = TfidfSVM(["sport", "food"], encoder="onnx-int8")
    first = featurize_items(rt, 1, "text-classification", learner, [ItemRef(1, "a late goal")])
    FEATURES.clear()  # another process: only the stored features are left
    again = featurize_items(
        rt, 1, "text-classification", learner, [ItemRef(2, "a late goal"), ItemRef(3, "pasta")]
    )
    assert encoded == ["a late goal", "pasta"]
    np.testing.assert_array_equal(
        again.features.array("minilm")[0], first.features.array("minilm")[0]
    )
