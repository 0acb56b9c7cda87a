"""The second kind: text spans (named entities). An annotation marks spans of the item's text.

The value is a list of spans ``{"start", "end", "label"}``: character offsets into the item's
text (end exclusive), one label each from the task's set, not overlapping; an empty list is an
answer too ("no entity here"). Stored sorted by position, so equal answers are equal values.

Models answer one object per text, not a score per label (:mod:`labelloop.learners.spans`):
``{"spans": [{"start", "end", "label", "score"}], "certainty": float}``, in an object array; the
labels a learner trains on are the values themselves (:meth:`TextSpans.encode`). A version is
scored and promoted on entity F1 (a span counts when offsets and label match exactly), ranked for
active ordering by its weakest token's certainty, and never auto-labels (see
:attr:`TextSpans.auto_label_refusal`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from labelloop.errors import InvalidInput
from labelloop.kinds.base import Scores, TaskKind, Value, quoted

if TYPE_CHECKING:
    from labelloop.loop.suspects import Suspect

Span = tuple[int, int, str]
TOKEN = re.compile(r"\w+|[^\w\s]")


def span_set(value: Value | None) -> set[Span]:
    """A value's spans as a set of ``(start, end, label)``."""
    return {(int(s["start"]), int(s["end"]), str(s["label"])) for s in value or []}


def normalized(value: Value) -> Value:
    """Spans sorted by position, each as ``{"start", "end", "label"}`` only."""
    return [
        {"start": start, "end": end, "label": label}
        for start, end, label in sorted(span_set(value))
    ]


def entity_scores(predicted: Sequence[Value], given: Sequence[Value]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (a span counts when offsets and label match exactly),
    and the share of texts whose spans match exactly."""
    tp = fp = fn = exact = 0
    for p, g in zip(predicted, given, strict=True):
        ps, gs = span_set(p), span_set(g)
        tp += len(ps & gs)
        fp += len(ps - gs)
        fn += len(gs - ps)
        exact += ps == gs
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(given)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "exact": exact / n if n else 0.0,
        "n": float(n),
    }


class TextSpans(TaskKind):
    """Spans of text, each with one label (named entities); the item is the text."""

    name = "text-spans"
    value_field = "spans"
    labelstudio_control = "Labels"
    labelstudio_type = "labels"
    needs_text = True
    promotion_metric = "entity F1"
    promotion_key = "cv_entity_f1"
    #: One label is enough to learn from: the text around a span says "no entity" too.
    min_classes = 1
    auto_label_refusal = (
        "auto-labelling is off for text-spans tasks: a model's spans are only ever pre-labels, "
        "since no certification of per-text exact-match accuracy exists for them yet"
    )

    @property
    def widget(self) -> str:
        return "spans"

    def check_labels(self, labels: Sequence[str]) -> None:
        if not labels:
            raise InvalidInput("a text-spans task needs at least one label")

    def validate(
        self, value: Value | None, labels: Sequence[str], where: str, text: str | None = None
    ) -> None:
        if value is None:
            return
        known = set(labels)
        size = len(text) if text is not None else None
        previous: tuple[int, int] | None = None
        for start, end, label in sorted(span_set(value)):
            at = f"{where}: span {start}-{end}"
            if label not in known:
                raise InvalidInput(
                    f"{at}: unknown label {quoted([label])}; the task's labels are {quoted(labels)}"
                )
            if start < 0 or end <= start:
                raise InvalidInput(f"{at}: a span needs 0 <= start < end (end is exclusive)")
            if size is not None and end > size:
                raise InvalidInput(f"{at}: ends after the text, which has {size} characters")
            if previous is not None and start < previous[1]:
                raise InvalidInput(
                    f"{at}: overlaps span {previous[0]}-{previous[1]}; spans may not overlap"
                )
            previous = (start, end)
        if len(span_set(value)) != len(value):
            raise InvalidInput(f"{where}: a span repeats")

    def normalize(self, value: Value) -> Value:
        return normalized(value)

    def same(self, a: Value | None, b: Value | None) -> bool:
        return a is not None and b is not None and span_set(a) == span_set(b)

    def classes(self, value: Value) -> set[str]:
        return {label for _, _, label in span_set(value)}

    # -- models' answers: one object per text (see the module docstring) ------------------------
    def encode(self, values: Sequence[Value], labels: Sequence[str]) -> np.ndarray:
        """The values themselves (normalized), one per row of an object array."""
        out = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            out[i] = normalized(value)
        return out

    def decide(self, scores: np.ndarray, labels: Sequence[str]) -> list[Value]:
        return [normalized(answer["spans"]) for answer in scores]

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """The certainty of each text's weakest token."""
        return np.array([float(answer["certainty"]) for answer in scores], dtype=np.float64)

    def stored_scores(self, scores: np.ndarray) -> list[list[float]]:
        """One score per proposed span, in the order of the spans."""
        return [
            [float(s["score"]) for s in sorted(a["spans"], key=lambda s: (s["start"], s["end"]))]
            for a in scores
        ]

    def ranked_scores(self, scores: np.ndarray) -> np.ndarray:
        """Each text as a two-way choice for its weakest token: right with its certainty ``c``
        or not. Below one half the model's own choice is a coin toss at best, so ``c`` counts as
        one half there: every query measure (margin, entropy, least confidence) then ranks the
        least certain text first."""
        c = np.maximum(self.confidence(scores), 0.5)
        return np.column_stack([c, 1.0 - c]) if len(c) else np.zeros((0, 2))

    def score(self, proba: np.ndarray, Y: np.ndarray) -> Scores:
        """Entity-level scores: ``accuracy`` is the share of texts whose spans match exactly,
        ``macro_f1`` the entity F1, ``details`` entity precision and recall."""
        got = entity_scores(self.decide(proba, ()), list(Y))
        details = {f"entity_{k}": round(got[k], 6) for k in ("precision", "recall", "f1")}
        return Scores(got["exact"], got["f1"], len(Y), details)

    def correct(self, proba: np.ndarray, Y: np.ndarray) -> np.ndarray:
        return np.array(
            [span_set(p) == span_set(g) for p, g in zip(self.decide(proba, ()), Y, strict=True)],
            dtype=bool,
        )

    def errors(self, proba: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Spans proposed but not labelled plus spans labelled but not proposed, per text: what
        entity F1 counts against a model."""
        return np.array(
            [
                len(span_set(p) ^ span_set(g))
                for p, g in zip(self.decide(proba, ()), Y, strict=True)
            ],
            dtype=np.int64,
        )

    def promotion_score(self, scores: Scores) -> float:
        """Entity F1."""
        return scores.macro_f1

    def suspects(self, proba: np.ndarray, Y: np.ndarray, labels: Sequence[str]) -> list[Suspect]:
        from labelloop.loop.suspects import find_span_suspects  # (the loop imports the kinds)

        return find_span_suspects(proba, list(Y))

    def prediction_fields(
        self, value: Value | None, scores: Sequence[float] | None, labels: Sequence[str]
    ) -> dict[str, Any]:
        """Spans with their scores (``scores`` holds one score per span, in order)."""
        if value is None:
            return {"spans": None}
        per = list(scores or [])
        return {
            "spans": [
                {**span, "score": per[i] if i < len(per) else None} for i, span in enumerate(value)
            ]
        }

    # -- Label Studio -------------------------------------------------------------------------
    def labelstudio_result(
        self,
        value: Value,
        score: float | None,
        from_name: str,
        to_name: str,
        text: str | None = None,
    ) -> list[dict[str, Any]]:
        out = []
        for i, span in enumerate(value):
            start, end = int(span["start"]), int(span["end"])
            result: dict[str, Any] = {
                "id": f"s{i}",
                "from_name": from_name,
                "to_name": to_name,
                "type": self.labelstudio_type,
                "value": {
                    "start": start,
                    "end": end,
                    "text": text[start:end] if text is not None else "",
                    "labels": [span["label"]],
                },
            }
            if span.get("score") is not None:
                result["score"] = span["score"]
            elif score is not None:
                result["score"] = score
            out.append(result)
        return out

    def labelstudio_value(self, results: Sequence[Any], from_name: str) -> Value | None:
        """The spans a submitted (not cancelled) annotation gives; none of them is the answer
        "no entity here", an empty list, as on the labelling page."""
        spans: list[dict[str, Any]] = []
        for r in results:
            if not isinstance(r, dict) or r.get("from_name") != from_name:
                continue
            if r.get("type", self.labelstudio_type) != self.labelstudio_type:
                continue
            value = r.get("value") or {}
            start, end = value.get("start"), value.get("end")
            if not isinstance(start, int) or not isinstance(end, int):
                continue
            for label in value.get("labels") or []:
                spans.append({"start": start, "end": end, "label": str(label)})
        return normalized(spans)

    # -- export -------------------------------------------------------------------------------
    def csv_cell(self, value: Value | None) -> str:
        return "|".join(f"{s['start']}:{s['end']}:{s['label']}" for s in value or [])

    def conll_lines(self, text: str, value: Value) -> list[str]:
        """Tokens (words and punctuation) with BIO tags; a span that does not fall on token
        boundaries tags the tokens it overlaps."""
        spans = sorted(span_set(value))
        out = []
        previous: int | None = None
        for tok in TOKEN.finditer(text):
            hit = next(
                (n for n, (a, b, _) in enumerate(spans) if tok.start() < b and tok.end() > a), None
            )
            tag = "O" if hit is None else f"{'I' if hit == previous else 'B'}-{spans[hit][2]}"
            previous = hit
            out.append(f"{tok.group()}\t{tag}")
        return out
