"""The task-kind seam: the registry, classification's and text spans' values, metrics, Label
Studio results and export cells."""

from __future__ import annotations

import numpy as np
import pytest

from labelloop.errors import InvalidInput
from labelloop.kinds import CATEGORIES, kind_for
from labelloop.kinds.classification import Classification
from labelloop.kinds.spans import TextSpans, entity_scores, normalized

TEXT = "Ada Lovelace met Charles Babbage in London."
ADA = {"start": 0, "end": 12, "label": "PER"}
BABBAGE = {"start": 17, "end": 32, "label": "PER"}
LONDON = {"start": 36, "end": 42, "label": "LOC"}


def test_registry_names_every_category_and_refuses_others() -> None:
    assert set(CATEGORIES) == {"image-classification", "text-classification", "text-spans"}
    assert isinstance(kind_for("image-classification", "multi-label"), Classification)
    spans = kind_for("text-spans")
    assert isinstance(spans, TextSpans) and spans.extra == "multi-class"
    assert spans.public() == {
        "name": "text-spans",
        "value_field": "spans",
        "media": "text",
        "widget": "spans",
    }
    assert kind_for("text-classification", "multi-label").widget == "multi-choice"
    assert kind_for("image-classification").media == "image"
    with pytest.raises(InvalidInput, match="unknown category"):
        kind_for("audio-tagging")
    with pytest.raises(InvalidInput, match="multi-box"):
        kind_for("text-spans", "multi-box")


def test_classification_values() -> None:
    single = kind_for("text-classification", "multi-class")
    single.validate(["a"], ["a", "b"], "annotation 0")
    single.validate(None, ["a", "b"], "annotation 0")  # a retraction
    with pytest.raises(InvalidInput, match=r'annotation 0: unknown label.*"c"'):
        single.validate(["c"], ["a", "b"], "annotation 0")
    with pytest.raises(InvalidInput, match="exactly one label"):
        single.validate(["a", "b"], ["a", "b"], "annotation 0")
    with pytest.raises(InvalidInput, match="at least two labels"):
        single.check_labels(["a"])
    multi = kind_for("text-classification", "multi-label")
    multi.validate([], ["a", "b"], "x")
    with pytest.raises(InvalidInput, match="repeats"):
        multi.validate(["a", "a"], ["a", "b"], "x")
    assert multi.same(["a", "b"], ["b", "a"]) and not multi.same(["a"], None)
    assert multi.csv_cell(["a", "b"]) == "a|b"
    scores = np.array([[0.9, 0.2], [0.4, 0.7]])
    assert multi.decide(scores, ["a", "b"]) == [["a"], ["b"]]
    assert single.decide(scores, ["a", "b"]) == [["a"], ["b"]]
    Y = single.encode([["a"], ["a"]], ["a", "b"])
    assert single.correct(scores, Y).tolist() == [True, False]
    assert single.score(scores, Y).accuracy == 0.5


def test_classification_label_studio_round_trip() -> None:
    kind = kind_for("image-classification", "multi-label")
    result = kind.labelstudio_result(["cat", "dog"], 0.75, "choice", "image")
    assert result == [
        {
            "from_name": "choice",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": ["cat", "dog"]},
            "score": 0.75,
        }
    ]
    assert kind.labelstudio_value(result, "choice") == ["cat", "dog"]
    assert kind.labelstudio_value(result, "other") is None
    assert kind.labelstudio_result([], None, "choice", "image") == []


def test_span_values_are_checked_against_the_text_and_the_labels() -> None:
    kind = kind_for("text-spans")
    labels = ["PER", "LOC"]
    kind.validate([LONDON, ADA, BABBAGE], labels, "a", TEXT)
    kind.validate([], labels, "a", TEXT)  # "no entity here" is an answer
    kind.validate(None, labels, "a", TEXT)
    with pytest.raises(InvalidInput, match=r"span 36-44: ends after the text, which has 43"):
        kind.validate([{"start": 36, "end": 44, "label": "LOC"}], labels, "a", TEXT)
    with pytest.raises(InvalidInput, match=r"span 5-5: .*start < end"):
        kind.validate([{"start": 5, "end": 5, "label": "LOC"}], labels, "a", TEXT)
    with pytest.raises(InvalidInput, match=r"span 4-12: overlaps span 0-12"):
        kind.validate([ADA, {"start": 4, "end": 12, "label": "LOC"}], labels, "a", TEXT)
    with pytest.raises(InvalidInput, match=r'unknown label "ORG"; the task\'s labels are "PER"'):
        kind.validate([{"start": 0, "end": 3, "label": "ORG"}], labels, "a", TEXT)
    with pytest.raises(InvalidInput, match="repeats"):
        kind.validate([ADA, ADA], labels, "a", TEXT)
    with pytest.raises(InvalidInput, match="at least one label"):
        kind.check_labels([])


def test_spans_compare_as_sets_and_score_by_entity() -> None:
    kind = kind_for("text-spans")
    assert kind.same([ADA, LONDON], [LONDON, ADA])
    assert not kind.same([ADA], [ADA, LONDON])
    assert kind.same([], []) and not kind.same([], None)
    assert normalized([LONDON, {**ADA, "score": 0.4}]) == [ADA, LONDON]
    got = entity_scores([[ADA, LONDON], []], [[ADA, BABBAGE], []])
    assert (got["precision"], got["recall"], got["f1"], got["exact"]) == (0.5, 0.5, 0.5, 0.5)
    assert kind.csv_cell([ADA, LONDON]) == "0:12:PER|36:42:LOC"
    assert kind.classes([ADA, LONDON]) == {"PER", "LOC"}


def test_spans_label_studio_round_trip() -> None:
    kind = kind_for("text-spans")
    result = kind.labelstudio_result(
        [{**ADA, "score": 0.9}, {**LONDON, "score": 0.6}], 0.6, "label", "text", TEXT
    )
    assert result[0]["type"] == "labels"
    assert result[0]["value"] == {"start": 0, "end": 12, "text": "Ada Lovelace", "labels": ["PER"]}
    assert [r["score"] for r in result] == [0.9, 0.6]
    assert kind.labelstudio_value(result, "label") == [ADA, LONDON]
    # A submitted annotation with no span: "no entity here" (an answer, not "no answer").
    assert kind.labelstudio_value([], "label") == []


def test_spans_as_bio_lines() -> None:
    kind = kind_for("text-spans")
    lines = kind.conll_lines(TEXT, [ADA, BABBAGE, {"start": 37, "end": 42, "label": "LOC"}])
    assert lines == [
        "Ada\tB-PER",
        "Lovelace\tI-PER",
        "met\tO",
        "Charles\tB-PER",
        "Babbage\tI-PER",
        "in\tO",
        "London\tB-LOC",  # a span off the token boundary tags the token it overlaps
        ".\tO",
    ]
    with pytest.raises(InvalidInput, match="conll format is for text-spans"):
        kind_for("text-classification").conll_lines("a", ["a"])


def _answers(*texts: tuple[list[tuple[int, int, str, float]], float]) -> np.ndarray:
    """Span learners' answers: spans with scores, and the weakest token's certainty."""
    out = np.empty(len(texts), dtype=object)
    for i, (spans, certainty) in enumerate(texts):
        out[i] = {
            "spans": [{"start": a, "end": b, "label": lab, "score": p} for a, b, lab, p in spans],
            "certainty": certainty,
        }
    return out


def test_span_answers_are_decided_scored_and_ranked_by_the_kind() -> None:
    kind = kind_for("text-spans")
    Y = kind.encode([[{"start": 0, "end": 3, "label": "PER"}], []], ["PER"])
    assert Y.dtype == object and Y.shape == (2,)
    answers = _answers(([(4, 8, "PER", 0.6), (0, 3, "PER", 0.9)], 0.6), ([], 0.3))
    assert kind.decide(answers, ["PER"])[0] == [
        {"start": 0, "end": 3, "label": "PER"},
        {"start": 4, "end": 8, "label": "PER"},
    ]
    assert kind.stored_scores(answers) == [[0.9, 0.6], []]  # in the order of the spans
    assert kind.correct(answers, Y).tolist() == [False, True]
    assert kind.errors(answers, Y).tolist() == [1, 0]  # one span too many
    s = kind.score(answers, Y)
    assert (s.accuracy, s.n) == (0.5, 2)
    assert s.details == {"entity_precision": 0.5, "entity_recall": 1.0, "entity_f1": 0.666667}
    assert kind.promotion_score(s) == s.macro_f1
    # Ranked by the weakest token: below one half counts as one half (the least certain).
    ranked = kind.ranked_scores(_answers(([], 0.99), ([], 0.7), ([], 0.2)))
    assert ranked.tolist() == [[0.99, pytest.approx(0.01)], [0.7, pytest.approx(0.3)], [0.5, 0.5]]
    assert kind.confidence(answers).tolist() == [0.6, 0.3]
