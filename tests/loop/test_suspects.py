"""Label-error flags rank planted errors first; annotator agreement is per annotator."""

from __future__ import annotations

import numpy as np

from labelloop.kinds.classification import indicator
from labelloop.loop.suspects import annotator_agreement, find_span_suspects, find_suspects

LABELS = ["a", "b", "c"]


def test_planted_errors_are_flagged_first() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 300)
    # Out-of-sample scores of a decent model: mostly right about the truth.
    scores = np.full((300, 3), 0.05)
    scores[np.arange(300), truth] = 0.9
    noisy = rng.random((300, 3)) * 0.1
    scores = (scores + noisy) / (scores + noisy).sum(axis=1, keepdims=True)
    given = truth.copy()
    planted = rng.choice(300, 15, replace=False)
    given[planted] = (truth[planted] + 1) % 3
    flags = find_suspects(scores, indicator([[LABELS[g]] for g in given], LABELS), LABELS, False)
    flagged = {f.position for f in flags}
    hits = flagged & set(planted.tolist())
    assert len(hits) >= 13  # recall
    assert len(hits) >= 0.85 * len(flagged)  # precision
    assert {f.position for f in flags[:10]} <= set(planted.tolist())  # the top of the ranking
    for f in flags:
        if f.position in hits:
            assert f.given == [LABELS[given[f.position]]] and f.suggested == [
                LABELS[truth[f.position]]
            ]


def test_multi_label_flags_the_contradicted_label() -> None:
    Y = np.array([[1, 0, 0]] * 20 + [[0, 1, 0]] * 20)
    scores = np.where(Y == 1, 0.9, 0.1).astype(float)
    scores[3] = [0.05, 0.95, 0.1]  # item 3 was given "a" but the model sees "b"
    flags = find_suspects(scores, Y, LABELS, True)
    assert [f.position for f in flags] == [3]
    assert flags[0].given == ["a"] and flags[0].suggested == ["b"]


def test_annotator_agreement() -> None:
    by_item = {
        1: {"ann": ["a"], "bob": ["a"]},
        2: {"ann": ["a"], "bob": ["b"], "cy": ["a"]},
        3: {"bob": ["c"]},  # only one annotator: not compared
    }
    rows = {r["annotator"]: r for r in annotator_agreement(by_item)}
    assert rows["ann"]["agreement"] == 2 / 3 and rows["ann"]["shared_items"] == 2
    assert rows["bob"]["agreement"] == 1 / 3
    assert rows["cy"]["agreement"] == 1 / 2


def test_no_flags_while_labels_are_too_few_to_judge() -> None:
    # Ten items over three classes: the model disagrees with one, but that says little yet.
    Y = indicator([["a"]] * 4 + [["b"]] * 3 + [["c"]] * 3, LABELS)
    scores = np.where(Y == 1, 0.8, 0.1)
    scores[0] = [0.05, 0.9, 0.05]
    assert find_suspects(scores, Y, LABELS, False) == []


def test_span_suspects_are_texts_the_model_is_sure_differ() -> None:
    """A labelled text whose out-of-sample spans differ, the model sure of it, is flagged with the
    spans it suggests; an unsure difference and an agreement are not."""
    per = {"start": 0, "end": 5, "label": "PER"}
    org = {"start": 0, "end": 5, "label": "ORG"}
    given = [[per]] * 12 + [[per], [per], []]
    answers = np.empty(len(given), dtype=object)
    for i in range(12):
        answers[i] = {"spans": [{**per, "score": 0.95}], "certainty": 0.95}
    answers[12] = {"spans": [{**org, "score": 0.92}], "certainty": 0.92}  # sure: another label
    answers[13] = {"spans": [{**org, "score": 0.55}], "certainty": 0.55}  # unsure
    answers[14] = {"spans": [{**per, "score": 0.85}], "certainty": 0.85}  # a name left out
    flagged = find_span_suspects(answers, given)
    assert [(f.position, f.given, f.suggested) for f in flagged] == [
        (12, [per], [org]),
        (14, [], [per]),
    ]
    assert flagged[0].score == 0.92
    assert find_span_suspects(answers[:5], given[:5]) == []  # too few labels to judge
