"""What a kind of task is: the one seam between "what people annotate" and everything else.

A task's *kind* (chosen by its category and extra) owns what differs between kinds of
annotation, so that the store, the labelling service, predictions, export, Label Studio and the
labelling page ask it instead of assuming "a label is a list of strings from a fixed set":

- the annotation value: the request field that carries it (``value_field``) and its checks
  (:meth:`TaskKind.validate`, errors in people's words naming the problem);
- how two values compare (:meth:`TaskKind.same`: was the pre-label edited);
- the metrics a version is scored and promoted by (:meth:`TaskKind.score`,
  :meth:`TaskKind.correct`);
- the Label Studio control it maps to and the result format it reads and writes
  (:meth:`TaskKind.labelstudio_result`, :meth:`TaskKind.labelstudio_value`);
- the export row (:meth:`TaskKind.export_fields`, :meth:`TaskKind.csv_cell`);
- the labelling page's input widget (``widget``).

Values are stored as JSON in ``annotations.labels`` / ``predictions.labels`` whatever the kind:
the kind says how to read them. The registry of kinds is :mod:`labelloop.kinds.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from typing_extensions import TypedDict

from labelloop.errors import InvalidInput

if TYPE_CHECKING:
    from labelloop.loop.suspects import Suspect


class TaskKindPublic(TypedDict):
    """What an annotation of the task is, as the API shows it with a task (re-exported by
    :mod:`labelloop.schemas`, the home of API shapes)."""

    #: ``classification`` or ``text-spans``.
    name: str
    #: The annotation body's field that carries the value: ``labels`` or ``spans``.
    value_field: str
    #: What the items are: ``image`` (data links) or ``text``.
    media: str
    #: The labelling page's input widget: ``choice``, ``multi-choice`` or ``spans``.
    widget: str


#: An annotation's value as stored (JSON): a list of labels, or of spans, ...
Value = list[Any]


@dataclass(frozen=True)
class Scores:
    """A version's out-of-sample scores: ``accuracy`` is the per-item exact-match rate and
    ``macro_f1`` the kind's F1 (per class for classification, per entity for spans);
    ``details`` what else the kind measures (entity precision and recall)."""

    accuracy: float
    macro_f1: float
    n: int
    details: dict[str, float] = field(default_factory=dict)


def quoted(labels: Sequence[str]) -> str:
    """Labels as people write them: ``"cat", "dog"`` (not a Python list)."""
    return ", ".join(f'"{label}"' for label in labels)


class TaskKind(ABC):
    """One kind of task (see the module docstring for what it owns)."""

    #: The kind's name, as the API shows it (``classification``, ``text-spans``).
    name: ClassVar[str]
    #: The annotation body's field that carries the value (``labels``, ``spans``).
    value_field: ClassVar[str]
    #: Label Studio's control tag for this kind (``Choices``, ``Labels``) and its result type.
    labelstudio_control: ClassVar[str]
    labelstudio_type: ClassVar[str]
    #: Values point into the item's text: :meth:`validate` needs it.
    needs_text: ClassVar[bool] = False
    #: Distinct labels the labelled items must use between them before a model trains.
    min_classes: ClassVar[int] = 2
    #: What :meth:`promotion_score` measures, in people's words, and its key in a version's
    #: metrics (retention keeps the best version by it).
    promotion_metric: ClassVar[str] = "accuracy"
    promotion_key: ClassVar[str] = "cv_accuracy"
    #: Why tasks of this kind cannot be auto-labelled (None: they can, once certified).
    auto_label_refusal: ClassVar[str | None] = None

    def __init__(self, category: str, extra: str, media: str) -> None:
        self.category = category
        self.extra = extra
        #: What the items are: ``image`` (a data link) or ``text`` (the text itself).
        self.media = media

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.category!r}, {self.extra!r})"

    def public(self) -> TaskKindPublic:
        """The kind as the API shows it with a task."""
        return {
            "name": self.name,
            "value_field": self.value_field,
            "media": self.media,
            "widget": self.widget,
        }

    # -- the task and the value -------------------------------------------------------------
    @property
    def widget(self) -> str:
        """The labelling page's input widget for this kind."""
        raise NotImplementedError

    @abstractmethod
    def check_labels(self, labels: Sequence[str]) -> None:
        """Refuse a task whose label set this kind cannot serve (:class:`InvalidInput`)."""

    @abstractmethod
    def validate(
        self, value: Value | None, labels: Sequence[str], where: str, text: str | None = None
    ) -> None:
        """Refuse an annotation value that does not fit the task (:class:`InvalidInput` naming
        the problem, prefixed by ``where``); ``None`` (a retraction) is always valid. ``text``
        is the item's content, for kinds whose values point into it."""

    def normalize(self, value: Value) -> Value:
        """A valid value as it is stored (equal answers are equal values)."""
        return value

    @abstractmethod
    def same(self, a: Value | None, b: Value | None) -> bool:
        """Do two values say the same (``False`` when either is missing): a human value that is
        not the same as the pre-label shown counts as an edit."""

    @abstractmethod
    def classes(self, value: Value) -> set[str]:
        """The task's labels a value uses (training waits for two classes)."""

    # -- models' answers ----------------------------------------------------------------------
    @abstractmethod
    def encode(self, values: Sequence[Value], labels: Sequence[str]) -> np.ndarray:
        """Values as the learners' targets."""

    @abstractmethod
    def decide(self, scores: np.ndarray, labels: Sequence[str]) -> list[Value]:
        """The value a model proposes for each row of its answers."""

    @abstractmethod
    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """How sure the model is of each proposed value (auto-labelling thresholds)."""

    def stored_scores(self, scores: np.ndarray) -> list[list[float]]:
        """Each item's scores as a pre-label keeps them (``predictions.scores``): one per label."""
        return [[round(float(v), 6) for v in row] for row in scores]

    def ranked_scores(self, scores: np.ndarray) -> np.ndarray:
        """The score matrix (items x choices) the query strategies measure a model's doubt on."""
        return scores

    def prediction_fields(
        self, value: Value | None, scores: Sequence[float] | None, labels: Sequence[str]
    ) -> dict[str, Any]:
        """A pre-label's kind-specific fields in API answers (``None``s when there is none)."""
        return {
            self.value_field: value,
            "scores": None if scores is None else dict(zip(labels, scores, strict=True)),
        }

    # -- metrics ------------------------------------------------------------------------------
    @abstractmethod
    def score(self, proba: np.ndarray, Y: np.ndarray) -> Scores:
        """How out-of-sample answers ``proba`` score against the labels ``Y``."""

    @abstractmethod
    def correct(self, proba: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Per item: was the proposed value exactly the labelled one (auto-labelling)."""

    def errors(self, proba: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Per item: how many mistakes the proposed value makes (the paired promotion test
        compares these): 0 or 1 for a label set."""
        wrong: np.ndarray = ~self.correct(proba, Y)
        return wrong.astype(int)

    def promotion_score(self, scores: Scores) -> float:
        """The score promotion and the choice of learner guard: exact-match accuracy."""
        return scores.accuracy

    @abstractmethod
    def suspects(self, proba: np.ndarray, Y: np.ndarray, labels: Sequence[str]) -> list[Suspect]:
        """Labelled items whose out-of-sample answers ``proba`` disagree with their labels ``Y``,
        most suspicious first."""

    # -- Label Studio -------------------------------------------------------------------------
    @abstractmethod
    def labelstudio_result(
        self,
        value: Value,
        score: float | None,
        from_name: str,
        to_name: str,
        text: str | None = None,
    ) -> list[dict[str, Any]]:
        """A pre-label as Label Studio's ``result`` list (empty when there is nothing to show)."""

    @abstractmethod
    def labelstudio_value(self, results: Sequence[Any], from_name: str) -> Value | None:
        """The value a Label Studio annotation's ``result`` gives for the control ``from_name``;
        ``None`` when it gives none."""

    # -- export -------------------------------------------------------------------------------
    def export_fields(self, value: Value | None) -> dict[str, Any]:
        """The kind's columns of an export row."""
        return {self.value_field: value}

    @abstractmethod
    def csv_cell(self, value: Value | None) -> str:
        """The value as one CSV cell."""

    def conll_lines(self, text: str, value: Value) -> list[str]:
        """One labelled text as CoNLL-style ``token<TAB>BIO tag`` lines (text spans only)."""
        raise InvalidInput(f"the conll format is for text-spans tasks, not {self.category}")
