"""One conformance test that every registered learner passes, for every category and extra it serves:
the constructor only stores parameters (explicit keywords, read back by get_params), fit returns
self, answers have the task's shape (a score per label, or for text spans one answer per text whose
spans point into it), and fit -> predict -> save -> load -> predict gives identical output.

Backbone learners run on a tiny TorchScript backbone the tests build themselves (and fine-tuning on
EfficientNet-Lite0 at 32x32 pixels for two epochs), so the suite stays fast.
"""

from __future__ import annotations

import inspect
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelloop.errors import InvalidInput
from labelloop.kinds import kind_for
from labelloop.learners import REGISTRY, Features, Learner
from tests.span_support import LABELS, corpus

CASES = [
    (category, extra, cls) for (category, extra), classes in REGISTRY.items() for cls in classes
]

VOCAB = {
    "sport": ["match", "goal", "team", "striker", "coach", "league"],
    "food": ["recipe", "soup", "bread", "pasta", "chef", "oven"],
    "tech": ["phone", "software", "laptop", "server", "code", "chip"],
}
TEXTS = {
    name: [f"news about the {w[i % 6]} and the {w[(i + 2) % 6]} today" for i in range(8)]
    for name, w in VOCAB.items()
}


def raw_items(
    category: str, digits: tuple[np.ndarray, np.ndarray]
) -> tuple[list[bytes], list[list[object]]]:
    if category == "text-spans":
        texts = corpus(48)
        return [t.encode() for t, _ in texts], [spans for _, spans in texts]
    if category == "image-classification":
        images, target = digits
        raws, labels = [], []
        for k in range(3):
            for image in images[target == k][:8]:
                buf = io.BytesIO()
                Image.fromarray((image * 15).astype(np.uint8), mode="L").save(buf, format="PNG")
                raws.append(buf.getvalue())
                labels.append(str(k))
        return raws, labels_as_sets(labels)
    raws, labels = [], []
    for name, texts in TEXTS.items():
        for t in texts:
            raws.append(t.encode())
            labels.append(name)
    return raws, labels_as_sets(labels)


def labels_as_sets(labels: list[str]) -> list[list[object]]:
    return [[label] for label in labels]


def small_params(cls: type[Learner], tiny: dict[str, object]) -> dict[str, object]:
    """Parameters that keep each learner's test small (a tiny backbone, two epochs)."""
    names = cls.param_names()
    params: dict[str, object] = {}
    if "backbone" in names:
        params["backbone"] = tiny
    if cls.name == "finetune":
        params.update(backbone={"input_size": 32}, epochs=2, batch_size=8)
    return params


def featurize(learner: Learner, raws: list[bytes]) -> Features:
    return Features({f.view: f.transform(raws) for f in learner.featurizers()})


@pytest.mark.parametrize(("category", "extra", "cls"), CASES, ids=lambda x: getattr(x, "name", x))
def test_learner_conformance(
    category: str,
    extra: str,
    cls: type[Learner],
    tmp_path: Path,
    digits: tuple[np.ndarray, np.ndarray],
    tiny_backbone_params: dict[str, object],
) -> None:
    raws, label_sets = raw_items(category, digits)
    kind = kind_for(category, extra)
    spans = category == "text-spans"
    names = [
        *(LABELS if spans else sorted({str(v) for ls in label_sets for v in ls})),
        "never-seen",
    ]
    if extra == "multi-label":
        # Give every item a second label on a pattern, so labels co-occur.
        label_sets = [
            ls + (["never-seen"] if i % 3 == 0 else []) for i, ls in enumerate(label_sets)
        ]
    multi = extra == "multi-label"

    # The constructor stores parameters and nothing else; get_params reads them back.
    params = small_params(cls, tiny_backbone_params)
    learner = cls(names, multi_label=multi, **params)
    assert {k: v for k, v in learner.get_params().items() if k in params} == params
    assert set(learner.get_params()) == set(cls.param_names())
    assert not [a for a in vars(learner) if a.endswith("_")]
    assert "fit" not in inspect.getsource(cls.__init__) if "__init__" in vars(cls) else True
    with pytest.raises(TypeError):
        cls(names, multi_label=multi, alpha_param_for_test=1)  # type: ignore[call-arg]
    with pytest.raises(InvalidInput, match="alpha_param_for_test"):
        learner.set_params(alpha_param_for_test=1)
    twin = learner.clone()
    assert twin.get_params() == learner.get_params() and twin is not learner
    learner = cls(names, multi_label=multi, **params)

    X = featurize(learner, raws)
    Y = kind.encode(label_sets, names)
    train = np.arange(len(raws)) % 4 != 0
    test = ~train
    fitted = learner.fit(X.take(np.flatnonzero(train)), Y[train], pool=X)
    assert fitted is learner

    scores = learner.predict_proba(X.take(np.flatnonzero(test)))
    if spans:
        check_span_answers(kind, scores, [raws[i].decode() for i in np.flatnonzero(test)], Y[test])
    else:
        assert scores.shape == (int(test.sum()), len(names))
        assert np.all(np.isfinite(scores)) and scores.min() >= 0.0 and scores.max() <= 1.0
    if not multi and not spans:
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
        assert scores[:, names.index("never-seen")].max() < 0.5
        accuracy = (scores.argmax(1) == Y[test].argmax(1)).mean()
        assert accuracy >= 0.5, f"{cls.name} learns nothing on an easy problem ({accuracy:.2f})"

    learner.save(tmp_path / "model")
    loaded = cls.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict_proba(X.take(np.flatnonzero(test))), scores)
    assert loaded.get_params() == learner.get_params()
    assert [f.describe() for f in loaded.featurizers()] == [
        f.describe() for f in learner.featurizers()
    ]

    # Refitting a clone on the same data gives the same model (training is deterministic).
    again = learner.clone().fit(X.take(np.flatnonzero(train)), Y[train], pool=X)
    if spans:
        assert kind.decide(again.predict_proba(X.take(np.flatnonzero(test))), names) == (
            kind.decide(scores, names)
        )
    else:
        np.testing.assert_allclose(
            again.predict_proba(X.take(np.flatnonzero(test))), scores, atol=1e-9
        )


def check_span_answers(kind: object, answers: np.ndarray, texts: list[str], Y: np.ndarray) -> None:
    """One answer per text: valid spans inside it with scores in [0, 1], a certainty, and a model
    that learned the easy corpus (entity F1 on held-out texts)."""
    from labelloop.kinds.spans import TextSpans

    assert isinstance(kind, TextSpans)
    assert answers.shape == (len(texts),)
    for answer, text in zip(answers, texts, strict=True):
        kind.validate(kind.decide(np.array([answer]), LABELS)[0], LABELS, "answer", text)
        assert all(0.0 <= s["score"] <= 1.0 for s in answer["spans"])
        assert 0.0 <= answer["certainty"] <= 1.0
    f1 = kind.score(answers, Y).macro_f1
    assert f1 >= 0.5, f"the span learner learns nothing on an easy corpus (entity F1 {f1:.2f})"


def test_every_category_and_extra_has_a_learner() -> None:
    for category in ("image-classification", "text-classification"):
        for extra in ("multi-class", "multi-label"):
            assert REGISTRY[(category, extra)], (category, extra)
    assert REGISTRY[("text-spans", "multi-class")]
