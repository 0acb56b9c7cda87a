"""Named entities in the loop: spaCy's NER trained from a blank English pipeline, on CPU.

Nothing is downloaded: ``spacy.blank("en")`` is spaCy's rule-based English tokenizer and the NER
component starts from random weights, small enough (a 64-wide, 2-deep CNN over hashed word
features) that a few hundred sentences train in seconds. Training stops after ``epochs`` passes,
or earlier once two epochs in a row have a loss below ``tol`` times the first epoch's.

**Offsets.** Texts are read exactly as stored (no whitespace normalisation), so the tokens' offsets
are the annotation's. A labelled span that does not fall on token boundaries is kept as given in
the store; the learner learns it as the tokens it overlaps (``alignment_mode="expand"``), and it
answers spans on token boundaries.

**Scores.** The component is spaCy's beam NER (``beam_ner``): it keeps the ``beam_width`` best
parses of a text, and a span's score is the probability mass of the parses in the beam that contain
it (spaCy's ``scored_ents``). A text's *certainty* is its weakest token's: a token inside a
proposed span is as certain as that span; a token outside is as certain as no span in the beam
covers it (one minus the mass of the parses that put it in one). Active ordering ranks texts by it,
so the text with the most doubtful token comes first.

**Answers.** ``predict_proba`` answers one object per text (an object array):
``{"spans": [{"start", "end", "label", "score"}], "certainty": float}``; the task's kind
(:class:`labelloop.kinds.spans.TextSpans`) reads it. Targets ``Y`` are the labelled values (lists of
spans), as the kind encodes them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from labelloop.errors import InvalidInput
from labelloop.learners.base import Features, Featurizer, Learner

#: The view the span learner reads: the text, unchanged.
VIEW = "text"


class RawTextFeaturizer(Featurizer):
    """The item's text exactly as stored (UTF-8): span offsets point into it, so nothing may move."""

    name = "text-raw"
    view = VIEW
    cacheable = False

    @property
    def version(self) -> str:
        return "text-raw-utf8-v1"

    def transform(self, raws: Sequence[bytes]) -> list[str]:
        return [r.decode("utf-8", errors="replace") for r in raws]


def _model_config(width: int, depth: int) -> dict[str, Any]:
    """spaCy's transition-based NER model, small: hashed word features and a narrow CNN."""
    return {
        "@architectures": "spacy.TransitionBasedParser.v2",
        "state_type": "ner",
        "extra_state_tokens": False,
        "hidden_width": width,
        "maxout_pieces": 2,
        "use_upper": True,
        "nO": None,
        "tok2vec": {
            "@architectures": "spacy.HashEmbedCNN.v2",
            "pretrained_vectors": None,
            "width": width,
            "depth": depth,
            "embed_size": 2000,
            "window_size": 1,
            "maxout_pieces": 3,
            "subword_features": True,
        },
    }


class SpacyNER(Learner):
    """spaCy beam NER from a blank English pipeline (see the module docstring)."""

    name = "spacy-ner"

    def __init__(
        self,
        labels: Sequence[str],
        multi_label: bool = False,
        *,
        epochs: int = 10,
        batch_size: int = 16,
        dropout: float = 0.1,
        width: int = 64,
        depth: int = 2,
        beam_width: int = 4,
        tol: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(labels, multi_label)
        self.epochs = epochs
        self.batch_size = batch_size
        self.dropout = dropout
        self.width = width
        self.depth = depth
        self.beam_width = beam_width
        self.tol = tol
        self.seed = seed

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        for key in ("epochs", "batch_size", "width", "depth"):
            if key in params and params[key] < 1:
                raise InvalidInput(f"learner parameter {key!r} of {cls.name!r} must be at least 1")
        if params.get("beam_width", 2) < 2:
            raise InvalidInput(
                f"learner parameter 'beam_width' of {cls.name!r} must be at least 2: "
                "span scores come from the beam's other parses"
            )
        if not 0.0 <= params.get("dropout", 0.0) < 1.0:
            raise InvalidInput(f"learner parameter 'dropout' of {cls.name!r} must be in [0, 1)")

    def make_featurizers(self) -> list[Featurizer]:
        return [RawTextFeaturizer()]

    def _blank(self, labelled: bool = True) -> Any:
        """The pipeline before training; unlabelled, the frame a saved model loads into (its
        labels come with it)."""
        import spacy

        nlp = spacy.blank("en")
        ner: Any = nlp.add_pipe(
            "beam_ner",
            config={
                "beam_width": self.beam_width,
                "model": _model_config(self.width, self.depth),
            },
        )
        for label in self.labels if labelled else ():
            ner.add_label(label)
        return nlp

    def _examples(self, nlp: Any, texts: Sequence[str], Y: np.ndarray) -> list[Any]:
        from spacy.training import Example
        from spacy.util import filter_spans

        out = []
        for text, value in zip(texts, Y, strict=True):
            doc = nlp.make_doc(text)
            spans = [
                doc.char_span(
                    int(s["start"]), int(s["end"]), label=str(s["label"]), alignment_mode="expand"
                )
                for s in value or []
            ]
            # Two spans inside one token expand to the same tokens: the first one is kept.
            kept = filter_spans([s for s in spans if s is not None])
            ents = [(s.start_char, s.end_char, s.label_) for s in kept]
            out.append(Example.from_dict(doc, {"entities": ents}))
        return out

    def fit(
        self,
        X: Features,
        Y: np.ndarray,
        pool: Features | None = None,
        init: Learner | None = None,
    ) -> Self:
        from spacy.util import minibatch
        from thinc.api import fix_random_seed

        fix_random_seed(self.seed)
        nlp = self._blank()
        examples = self._examples(nlp, X.texts(VIEW), Y)
        optimizer = nlp.initialize(lambda: examples)
        order = random.Random(self.seed)
        first: float | None = None
        low = 0  # consecutive epochs under tol x the first one's loss (the beam's loss jumps)
        self.epochs_run_ = 0
        for _ in range(self.epochs):
            order.shuffle(examples)
            losses: dict[str, float] = {}
            for batch in minibatch(examples, size=self.batch_size):  # type: ignore[no-untyped-call]
                nlp.update(batch, sgd=optimizer, losses=losses, drop=self.dropout)
            self.epochs_run_ += 1
            loss = float(losses.get("beam_ner", 0.0))
            first = loss if first is None else first
            low = low + 1 if loss <= self.tol * first else 0
            if low == 2:
                break
        self.nlp_ = nlp
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        """One answer per text (see the module docstring), as an object array."""
        nlp = self.nlp_
        ner = nlp.get_pipe("beam_ner")
        docs = [nlp.make_doc(t) for t in X.texts(VIEW)]
        out = np.empty(len(docs), dtype=object)
        if not docs:
            return out
        beams = ner.predict(docs)
        scored = ner.scored_ents(beams)
        ner.set_annotations(docs, beams)
        for i, (doc, scores) in enumerate(zip(docs, scored, strict=True)):
            out[i] = _answer(doc, scores)
        return out

    def _state(self) -> Any:
        return {"nlp": self.nlp_.to_bytes(), "epochs_run": self.epochs_run_}

    def _restore(self, state: Any) -> None:
        self.nlp_ = self._blank(labelled=False).from_bytes(state["nlp"])
        self.epochs_run_ = int(state["epochs_run"])


def _answer(doc: Any, scores: dict[tuple[int, int, str], float]) -> dict[str, Any]:
    """A text's proposed spans with their beam probabilities, and its weakest token's certainty."""
    covered = np.zeros(len(doc))
    for (start, end, _), p in scores.items():
        covered[start:end] += p
    certainty = np.clip(1.0 - covered, 0.0, 1.0)
    spans = []
    for ent in doc.ents:
        p = float(min(1.0, max(0.0, scores.get((ent.start, ent.end, ent.label_), 0.0))))
        certainty[ent.start : ent.end] = p
        spans.append(
            {
                "start": ent.start_char,
                "end": ent.end_char,
                "label": ent.label_,
                "score": round(p, 6),
            }
        )
    return {
        "spans": spans,
        "certainty": round(float(certainty.min()) if len(doc) else 1.0, 6),
    }
