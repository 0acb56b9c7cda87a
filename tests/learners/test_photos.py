"""Photo learners: image decoding, your own backbone, frozen features, parameter checks, the
choice of learner by cross-validation, and fine-tuning that resumes from its epoch checkpoints.

Every backbone here is a tiny network the tests build themselves, except where EfficientNet-Lite0
itself is the point (fine-tuning, at 32x32 pixels and a handful of images)."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from labelloop.errors import InvalidInput, Unavailable
from labelloop.kinds.classification import indicator
from labelloop.learners import backbones, learner_by_name, make_learner
from labelloop.learners.auto import AutoImage
from labelloop.learners.base import Features, Learner
from labelloop.learners.choice import choose
from labelloop.learners.embedding import EmbeddingFeaturizer, EmbeddingLogReg
from labelloop.learners.finetune import FineTune, Trainer
from labelloop.learners.image import PoolSVM
from labelloop.learners.registry import check_params
from labelloop.learners.text import TfidfSVM


def png(array: np.ndarray, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def jpeg_with_orientation(array: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def featurize(learner: Learner, raws: list[bytes]) -> Features:
    return Features({f.view: f.transform(raws) for f in learner.featurizers()})


def colour_squares(n: int, seed: int = 0) -> tuple[list[bytes], list[str]]:
    """Red or green squares of the same grey level on noise: grey pixels cannot tell them apart."""
    rng = np.random.default_rng(seed)
    raws, labels = [], []
    for i in range(n):
        label = "red" if i % 2 == 0 else "green"
        img = rng.integers(90, 110, size=(32, 32, 3)).astype(np.uint8)
        y, x = rng.integers(0, 16, size=2)
        # Equal luminance: 0.299 R = 0.587 G.
        colour = (196, 0, 0) if label == "red" else (0, 100, 0)
        img[y : y + 16, x : x + 16] = colour
        raws.append(png(img))
        labels.append(label)
    return raws, labels


def halves(n: int, seed: int = 0) -> tuple[list[bytes], list[str]]:
    """Bright left half or bright right half: a grey layout that pixels tell apart perfectly."""
    rng = np.random.default_rng(seed)
    raws, labels = [], []
    for i in range(n):
        label = "left" if i % 2 == 0 else "right"
        img = rng.integers(0, 60, size=(32, 32)).astype(np.uint8)
        if label == "left":
            img[:, :16] += 150
        else:
            img[:, 16:] += 150
        raws.append(png(np.stack([img] * 3, axis=-1)))
        labels.append(label)
    return raws, labels


# -- decoding -------------------------------------------------------------------------------------


def test_decoding_applies_exif_orientation_and_converts_to_rgb() -> None:
    tall = np.zeros((40, 20, 3), dtype=np.uint8)
    tall[:20] = (255, 255, 255)  # top half white
    upright = backbones.decode_rgb(png(tall), 16)
    assert upright.shape == (16, 16, 3) and upright[0].mean() > 200 and upright[-1].mean() < 50
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to show upright.
    rotated = backbones.decode_rgb(jpeg_with_orientation(np.rot90(tall, 1).copy(), 6), 16)
    assert rotated[0].mean() > 200 and rotated[-1].mean() < 50
    grey = backbones.decode_rgb(png(np.full((20, 20), 128, dtype=np.uint8)), 8)
    assert grey.shape == (8, 8, 3)
    rgba = backbones.decode_rgb(png(np.full((20, 20, 4), 200, dtype=np.uint8)), 8)
    assert rgba.shape == (8, 8, 3)


def test_undecodable_bytes_are_a_fetch_error() -> None:
    from labelloop.errors import FetchError

    with pytest.raises(FetchError, match="cannot decode"):
        backbones.decode_rgb(b"not an image", 8)


# -- your own backbone ----------------------------------------------------------------------------


def test_torchscript_and_onnx_backbones_give_the_same_embeddings(
    tiny_backbone_files: tuple[Path, Path],
) -> None:
    ts, onnx_path = tiny_backbone_files
    raws, _ = colour_squares(6)
    a = EmbeddingFeaturizer(kind="torchscript", path=str(ts), input_size=32)
    b = EmbeddingFeaturizer(kind="onnx", path=str(onnx_path), input_size=32)
    ea, eb = a.transform(raws), b.transform(raws)
    assert ea.shape == (6, 16)
    np.testing.assert_allclose(ea, eb, rtol=1e-4, atol=1e-5)
    assert a.spec.sha256 is not None and a.spec.sha256[:16] in a.version
    assert a.version != b.version


def test_a_model_refuses_a_changed_backbone_file(
    tmp_path: Path, tiny_backbone_files: tuple[Path, Path]
) -> None:
    path = tmp_path / "mine.pt"
    path.write_bytes(tiny_backbone_files[0].read_bytes())
    raws, labels = colour_squares(12)
    learner = EmbeddingLogReg(["red", "green"], backbone=str(path))
    X = featurize(learner, raws)
    learner.fit(X, indicator([[x] for x in labels], ["red", "green"])).save(tmp_path / "m")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(InvalidInput, match="changed since this model was trained"):
        EmbeddingLogReg.load(tmp_path / "m")


def test_backbone_settings_are_parsed_and_checked(tiny_backbone_files: tuple[Path, Path]) -> None:
    assert backbones.parse("none") is None
    assert backbones.parse("efficientnet-lite0") == backbones.BackboneSpec()
    spec = backbones.parse(json.dumps({"kind": "onnx", "path": str(tiny_backbone_files[1])}))
    assert spec is not None and spec.kind == "onnx"
    with pytest.raises(InvalidInput, match="input_size"):
        backbones.parse({"kind": "onnx", "path": "x.onnx", "input_size": 3})
    with pytest.raises(InvalidInput, match="cannot read the backbone file"):
        check_params("image-classification", "multi-class", None, {"backbone": "/nope/x.onnx"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_embeddings_match_the_cpu_ones() -> None:
    raws, _ = colour_squares(4)
    fz = EmbeddingFeaturizer()
    on_gpu = fz.transform(raws)
    backbone = backbones.get(fz.spec)
    assert backbone.device == "cuda"
    images = np.stack([backbones.decode_rgb(r, 224) for r in raws])
    with torch.inference_mode():
        cpu_module = backbone.module.to("cpu")
        x = torch.from_numpy(backbone.normalise(images))
        on_cpu = cpu_module.extract_features(x).mean((2, 3)).numpy()
        backbone.module.to("cuda")
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)


# -- features frozen with a version ---------------------------------------------------------------


TEXTS = ["the match ended", "a late goal", "the team won", "bake the bread", "tomato soup", "pasta"]
TEXT_LABELS = [["sport"]] * 3 + [["food"]] * 3


def test_a_text_model_trained_without_embeddings_ignores_them_once_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelloop.learners import text

    monkeypatch.setattr(text, "embeddings_available", lambda: False)
    learner = TfidfSVM(["sport", "food"])  # embeddings="auto": not available now
    X = featurize(learner, [t.encode() for t in TEXTS])
    learner.fit(X, indicator(TEXT_LABELS, ["sport", "food"]))
    before = learner.predict_proba(X)
    learner.save(tmp_path / "m")

    monkeypatch.setattr(text, "embeddings_available", lambda: True)  # the extra gets installed
    loaded = learner_by_name("tfidf-svm").load(tmp_path / "m")
    assert [f.name for f in loaded.featurizers()] == ["text"]
    again = featurize(loaded, [t.encode() for t in TEXTS])
    assert set(again.views) == {"text"}
    np.testing.assert_array_equal(loaded.predict_proba(again), before)
    # A new training may use what is new.
    assert [f.name for f in TfidfSVM(["sport", "food"]).featurizers()] == [
        "text",
        "minilm-static",
    ]


def hide_modules(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_a_model_whose_featurizer_package_is_gone_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = TfidfSVM(["sport", "food"], embeddings=False)
    learner.fit(
        featurize(learner, [t.encode() for t in TEXTS]), indicator(TEXT_LABELS, ["sport", "food"])
    )
    learner.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "learner.json").read_text())
    meta["featurizers"].append({"name": "minilm", "version": "minilm-l6-v2-v1", "config": {}})
    (tmp_path / "m" / "learner.json").write_text(json.dumps(meta))
    hide_modules(monkeypatch, "sentence_transformers")
    with pytest.raises(Unavailable, match="sentence-transformers"):
        TfidfSVM.load(tmp_path / "m")


def test_a_photo_model_without_its_backbone_package_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_backbone_files: tuple[Path, Path]
) -> None:
    raws, labels = colour_squares(12)
    onnx_spec = {"kind": "onnx", "path": str(tiny_backbone_files[1]), "input_size": 32}
    learner = EmbeddingLogReg(["red", "green"], backbone=onnx_spec)
    learner.fit(featurize(learner, raws), indicator([[x] for x in labels], ["red", "green"]))
    learner.save(tmp_path / "m")
    record = json.loads((tmp_path / "m" / "learner.json").read_text())["featurizers"]
    assert record[0]["name"] == "backbone" and record[0]["config"]["kind"] == "onnx"
    assert record[0]["config"]["input_size"] == 32 and record[0]["config"]["sha256"]
    hide_modules(monkeypatch, "onnxruntime")
    with pytest.raises(Unavailable, match="onnxruntime"):
        EmbeddingLogReg.load(tmp_path / "m")


def test_models_saved_before_featurizers_were_recorded_still_load(tmp_path: Path) -> None:
    raws, labels = halves(12)
    learner = PoolSVM(["left", "right"])
    X = featurize(learner, raws)
    learner.fit(X, indicator([[x] for x in labels], ["left", "right"])).save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "learner.json").read_text())
    meta["featurizers"] = ["pixels-L-16-v1"]
    del meta["libraries"]
    (tmp_path / "m" / "learner.json").write_text(json.dumps(meta))
    loaded = PoolSVM.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict_proba(X), learner.predict_proba(X))


def test_loading_warns_when_library_versions_differ(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raws, labels = halves(12)
    learner = PoolSVM(["left", "right"])
    learner.fit(featurize(learner, raws), indicator([[x] for x in labels], ["left", "right"]))
    learner.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "learner.json").read_text())
    assert {"numpy", "scikit-learn", "labelloop"} <= set(meta["libraries"])
    meta["libraries"]["scikit-learn"] = "0.0.1"
    (tmp_path / "m" / "learner.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        PoolSVM.load(tmp_path / "m")
    assert "scikit-learn" in caplog.text and "0.0.1" in caplog.text


# -- learner parameters ---------------------------------------------------------------------------


def test_learner_params_are_checked_by_name_and_type() -> None:
    ok = check_params("image-classification", "multi-class", "pool-svm", {"C": 3, "k": 7})
    assert ok == {"C": 3.0, "k": 7}
    with pytest.raises(InvalidInput, match="'C'"):
        check_params("image-classification", "multi-class", "pool-svm", {"C": "abc"})
    with pytest.raises(InvalidInput, match="'kk'"):
        check_params("image-classification", "multi-class", "pool-svm", {"kk": 1})
    with pytest.raises(InvalidInput, match="'embeddings'"):
        check_params("text-classification", "multi-class", None, {"embeddings": "sometimes"})
    with pytest.raises(InvalidInput, match="no-such-learner"):
        check_params(
            "image-classification", "multi-class", "auto", {"candidates": ["no-such-learner"]}
        )
    with pytest.raises(InvalidInput, match="'lr'"):
        make_learner("image-classification", "multi-class", ["a", "b"], "finetune", lr=[1])


def test_a_task_with_bad_learner_params_is_refused_with_422(app_client: Any) -> None:
    r = app_client.post(
        "/api/v1/tasks",
        json={
            "name": "t",
            "category": "image-classification",
            "labels": ["a", "b"],
            "policy": {"learner": "pool-svm", "learner_params": {"C": "abc"}},
        },
    )
    assert r.status_code == 422 and "'C'" in r.json()["detail"]
    r = app_client.post(
        "/api/v1/tasks",
        json={
            "name": "t",
            "category": "image-classification",
            "labels": ["a", "b"],
            "policy": {"learner_params": {"no_such": 1}},
        },
    )
    assert r.status_code == 422 and "no_such" in r.json()["detail"]


# -- the choice by measurement --------------------------------------------------------------------


def choice_on(raws: list[bytes], labels: list[str], tiny: dict[str, object]) -> Any:
    names = sorted(set(labels))
    auto = AutoImage(names, backbone=tiny)
    X = featurize(auto, raws)
    Y = indicator([[x] for x in labels], names)
    return choose(auto.candidate_learners(len(labels)), X, Y, X, k=4, seed=0)


def test_colour_photos_choose_the_backbone_and_grey_layouts_choose_pixels(
    tiny_backbone_params: dict[str, object],
) -> None:
    raws, labels = colour_squares(40)
    choice = choice_on(raws, labels, tiny_backbone_params)
    assert choice.learner.name.startswith("embedding-")
    ev = choice.candidates
    assert ev[choice.learner.name]["cv_accuracy"] > ev["pool-svm"]["cv_accuracy"] + 0.2
    assert choice.learner.name in choice.reason and "pool-svm" in choice.reason

    raws, labels = halves(40)
    choice = choice_on(raws, labels, tiny_backbone_params)
    assert choice.learner.name == "pool-svm"
    # Pixels measure best (a near-tie would go to the lower Brier score, then the earlier one).
    best = max(e["cv_accuracy"] for e in choice.candidates.values())
    assert choice.candidates["pool-svm"]["cv_accuracy"] == best == 1.0


class CostlyLogReg(EmbeddingLogReg):
    """The linear head, declared costly: scored on one fold like fine-tuning."""

    name = "costly-logreg"
    holdout_only = True


def test_a_costly_candidate_is_scored_on_one_fold_and_fully_only_when_it_wins(
    tiny_backbone_params: dict[str, object],
) -> None:
    names = ["green", "red"]
    for raws, labels, wins in ((*colour_squares(40), True), (*halves(40), False)):
        X = featurize(EmbeddingLogReg(names, backbone=tiny_backbone_params), raws)
        X.views.update(featurize(PoolSVM(names), raws).views)
        Y = indicator([[x] for x in labels], sorted(set(labels)))
        costly = CostlyLogReg(sorted(set(labels)), backbone=tiny_backbone_params)
        choice = choose([PoolSVM(sorted(set(labels))), costly], X, Y, X, k=4, seed=0)
        ev = choice.candidates["costly-logreg"]
        assert "pool-svm" in ev["against"]
        if wins:  # colours: the head beats grey pixels on the first fold, then is scored fully
            assert choice.learner is costly and ev["evaluation"] == "k-fold"
            assert ev["scored_on"] == 40 and ev["first_fold_accuracy"] > ev["against"]["pool-svm"]
            assert np.all(choice.oos.sum(axis=1) > 0)  # out-of-sample scores for every label
        else:  # a grey layout: pixels are perfect, the costly one is fitted once only
            assert choice.learner.name == "pool-svm" and ev["evaluation"] == "one fold"
            assert ev["scored_on"] == 10


def test_without_a_backbone_image_tasks_choose_among_pixel_learners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backbones, "_DEFAULT", None)
    auto = AutoImage(["a", "b"])
    assert [c.name for c in auto.candidate_learners(1000)] == ["pool-svm"]
    assert [f.name for f in auto.featurizers()] == ["pixels"]


def test_fine_tuning_is_a_candidate_only_with_enough_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backbones, "_DEFAULT", backbones.BackboneSpec())
    auto = AutoImage(["a", "b"], finetune_min_labels=50)
    assert "finetune" not in [c.name for c in auto.candidate_learners(49)]
    assert "finetune" in [c.name for c in auto.candidate_learners(50)]
    assert "finetune" not in [
        c.name for c in AutoImage(["a", "b"], multi_label=True).candidate_learners(500)
    ]


# -- fine-tuning ----------------------------------------------------------------------------------


class Killed(BaseException):
    """Stands for the worker dying in the middle of an epoch."""


def test_fine_tuning_resumes_from_its_epoch_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raws, labels = colour_squares(16)
    names = ["green", "red"]
    params: dict[str, Any] = {"backbone": {"input_size": 32}, "epochs": 3, "batch_size": 8}
    params["patience"] = 10
    learner = FineTune(names, **params)
    X = featurize(learner, raws)
    Y = indicator([[x] for x in labels], names)
    uninterrupted = FineTune(names, **params).fit(X, Y).predict_proba(X)

    snapshot = tmp_path / "Snapshot"
    real_epoch = Trainer.train_epoch

    def die_in_second_epoch(self: Trainer, epoch: int) -> float:
        if epoch == 1:
            raise Killed
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", die_in_second_epoch)
    first = FineTune(names, **params)
    first.set_snapshot_dir(snapshot)
    with pytest.raises(Killed):
        first.fit(X, Y)
    [checkpoint] = list(snapshot.glob("finetune-*/epoch-*.ckpt"))
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["state"]["epoch"] == 1 and {"model", "optimizer", "torch_rng"} <= set(saved)

    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    again = FineTune(names, **params)
    again.set_snapshot_dir(snapshot)
    again.fit(X, Y)  # the redelivered job
    assert again.resumed_from_ == 1 and again.epochs_ == 3
    np.testing.assert_allclose(again.predict_proba(X), uninterrupted, atol=1e-5)
