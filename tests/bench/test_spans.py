"""The NER bench's corpus reader and its annotator, without a model (the stream's accounting is
what the figures in docs/BENCHMARKS.md rest on)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.datasets import conll_ner
from bench.spans import Correction, add_texts, label_stream

from labelloop.client import Client

# IOB2 (B- starts an entity) and the original IOB1 (an I- after another label starts one).
CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER
in IN B-PP O
Nord NNP B-NP I-LOC
Stadt NNP I-NP I-LOC
-DOCSTART- -X- -X- O

Nothing NN B-NP O
"""


def test_a_conll_file_gives_sentences_and_their_spans(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text(CONLL)
    ds = conll_ner(path)
    assert ds.texts == [
        "EU rejects German call",
        "Peter Blackburn Smith in Nord Stadt",
        "Nothing",
    ]
    assert ds.labels == ["LOC", "MISC", "ORG", "PER"]
    text = ds.texts[1]
    assert [(text[s["start"] : s["end"]], s["label"]) for s in ds.spans[1]] == [
        ("Peter Blackburn", "PER"),
        ("Smith", "PER"),
        ("Nord Stadt", "LOC"),
    ]
    assert ds.spans[0] == [
        {"start": 0, "end": 2, "label": "ORG"},
        {"start": 11, "end": 17, "label": "MISC"},
    ]
    assert ds.spans[2] == []


def test_a_correction_counts_what_the_annotator_does() -> None:
    truth = [
        {"start": 0, "end": 5, "label": "PER"},
        {"start": 10, "end": 15, "label": "LOC"},
        {"start": 20, "end": 25, "label": "ORG"},
    ]
    shown = [
        {"start": 0, "end": 5, "label": "PER"},  # right: kept
        {"start": 10, "end": 15, "label": "ORG"},  # offsets right, label wrong: relabelled
        {"start": 20, "end": 22, "label": "ORG"},  # wrong offsets: removed, the true one typed
        {"start": 30, "end": 33, "label": "PER"},  # not an entity: removed
    ]
    assert Correction.of(shown, truth) == Correction(kept=1, relabelled=1, removed=2, typed=1)
    assert Correction.of([], truth) == Correction(typed=3)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_without_a_model_every_span_is_typed(live_url: str) -> None:
    texts = ["Ada Lovelace met Charles Babbage.", "Nothing here."]
    truth = [
        [{"start": 0, "end": 12, "label": "PER"}, {"start": 17, "end": 32, "label": "PER"}],
        [],
    ]
    with Client(live_url) as client:
        task = client.create_task("bench", "text-spans", ["PER"], policy={"min_labels": 10**6})
        ids = add_texts(client, task["id"], texts)
        log = label_stream(client, task["id"], list(zip(ids, truth, strict=True)))
        labelled = [client.get_item(task["id"], i)["labels"] for i in ids]
    assert labelled == truth
    summary = log.summary()
    assert summary["sentences"] == 2 and summary["edited_share"] == 1.0  # nothing was shown
    assert summary["shown_entity_scores"] is None and summary["trainings"] == 0
    assert summary["typing"] == {
        "spans_in_labels": 2,
        "spans_typed": 2,
        "relabelled": 0,
        "removed": 0,
        "typed_share": 1.0,
        "actions_share": 1.0,
    }
