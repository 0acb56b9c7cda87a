"""The shapes of the HTTP API, in one place: what each call takes and what it answers.

Named in the FastAPI template's style: ``XCreate`` / ``XUpdate`` are request bodies (pydantic
models that validate and normalise at the boundary, before anything is written); ``XPublic`` and
the other answers are typed dicts (``TypedDict``). The server declares them as every route's
``response_model`` (an answer that drifts from its shape fails the tests instead of surprising a
client), and :mod:`labelloop.client` returns them as the plain JSON dicts they describe, so a
caller keeps writing ``task["id"]`` and mypy knows the keys.

Text at the boundary: every string a request carries must be UTF-8 text without NUL (PostgreSQL
cannot store it) and without lone surrogates (nothing can encode them); labels are normalised to
NFC and must show something; ids fit the store's integer columns. Messages say what to change, in
people's words (:func:`explain`), and never echo a Python repr or the offending characters.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from typing_extensions import TypedDict

from labelloop.kinds.base import TaskKindPublic
from labelloop.loop.policy import Policy

#: The largest id the store holds: ids are ``INTEGER`` columns (32-bit on PostgreSQL).
MAX_ID = 2**31 - 1
#: Longest label, in characters after normalisation.
MAX_LABEL_CHARS = 200
#: The most characters an item's data holds (a link, or a whole text).
MAX_ITEM_DATA_CHARS = 1_000_000

# -- text at the boundary ---------------------------------------------------------------------

#: Characters that take no space and have no use inside a label: a label holding one would look
#: the same as one without it.
_ZERO_WIDTH = frozenset("\u00ad\u180e\u200b\u2060\ufeff")
#: Letters that render as nothing (Hangul fillers, the blank Braille pattern).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
#: Categories of characters that show nothing by themselves: separators, controls, format
#: characters, surrogates, private use, unassigned, and combining marks.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me"})


def check_text(value: str) -> str:
    """``value`` if it is text every store and encoder takes; else a ``ValueError`` saying why."""
    if "\x00" in value:
        raise ValueError("holds a NUL character (control characters such as NUL cannot be stored)")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "is not valid text: it holds a lone surrogate (half of a UTF-16 pair)"
            ) from None
    return value


class TextError(ValueError):
    """A string (or number) inside free-form JSON that cannot be stored; ``path`` says where."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def check_json(value: Any) -> Any:
    """``value`` (parsed JSON) if every string in it, keys included, is valid text and every
    number is finite; else a :class:`TextError` naming where."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            _checked(node, where, "")
        elif isinstance(node, float) and not math.isfinite(node):
            raise TextError(where, "numbers must be finite (no NaN or Infinity)")
        elif isinstance(node, Mapping):
            for key, child in node.items():
                if isinstance(key, str):
                    _checked(key, where, "a key ")
                stack.append((f"{where}.{key}" if where else str(key), child))
        elif isinstance(node, list | tuple):
            stack.extend((f"{where}[{n}]", child) for n, child in enumerate(node))
    return value


def _checked(text: str, where: str, what: str) -> None:
    try:
        check_text(text)
    except ValueError as exc:
        raise TextError(where, f"{what}{exc}") from None


def clean_label(value: str) -> str:
    """A label as stored: NFC, without surrounding space; refused when it would look empty, holds
    a control or zero-width character, or is too long."""
    check_text(value)
    label = unicodedata.normalize("NFC", value).strip()
    if not any(
        unicodedata.category(ch) not in _INVISIBLE_CATEGORIES and ch not in _BLANK_LETTERS
        for ch in label
    ):
        raise ValueError("a label must show at least one visible character")
    if any(unicodedata.category(ch) == "Cc" for ch in label):
        raise ValueError("a label must not hold control characters (tabs, line breaks)")
    if any(ch in _ZERO_WIDTH for ch in label):
        raise ValueError("a label must not hold invisible characters such as a zero-width space")
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"a label is longer than {MAX_LABEL_CHARS} characters")
    return label


def _clean_name(value: str) -> str:
    name = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if not name:
        raise ValueError("give a name that is not only spaces")
    return name


#: Any string a request carries.
Text = Annotated[str, AfterValidator(check_text)]
#: One label of a task, normalised.
Label = Annotated[str, AfterValidator(clean_label)]
#: Free-form JSON (learner parameters, Label Studio payloads), checked all the way down.
Json = Annotated[dict[str, Any], BeforeValidator(check_json)]
#: A stored row's id.
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
#: A model version (the first is 0).
Version = Annotated[int, Field(ge=0, le=MAX_ID)]


def unique_labels(labels: Iterable[str]) -> None:
    """Refuse labels that repeat once normalised."""
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise ValueError(f'labels must be unique; "{label}" is given twice')
        seen.add(label)


# -- validation messages in people's words ----------------------------------------------------

#: What one element of a list field is called, for "give at least one label".
_NOUNS = {
    "labels": ("label", "labels"),
    "items": ("item", "items"),
    "annotations": ("annotation", "annotations"),
    "files": ("file", "files"),
}
_WHERE = frozenset({"body", "query", "path", "header", "cookie", "form"})


#: A Python object's default repr (``<_io.BytesIO object at 0x7f…>``), which a third-party
#: library's message may carry: it means nothing to a person.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe to put in a message: no NUL, control or unencodable characters, no object
    reprs, bounded."""
    text = _OBJECT_REPR.sub("(the data)", text)
    clean = "".join(
        "?" if unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\t\n" else ch
        for ch in text[: limit + 1]
    )
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _as_message(text: str) -> str:
    return printable(text, 4000)


#: A message in an answer (an item's or a job's error, an error's detail): printable on the way out.
Message = Annotated[str, AfterValidator(_as_message)]


def _where(loc: tuple[int | str, ...]) -> str:
    """``labels[1]``, ``policy.min_labels``: the field, without FastAPI's "body" or "query"."""
    if loc and loc[0] in _WHERE:
        loc = loc[1:]
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{printable(part, 60)}" if out else printable(part, 60)
    return out


def _count(n: object, field: str) -> str:
    one, many = _NOUNS.get(field, ("value", "values"))
    return f"one {one}" if n == 1 else f"{n} {many}"


def _describe(err: ErrorDetails, field: str) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    text = {
        "missing": "is required",
        "extra_forbidden": "is not a field of this request",
        "string_type": "must be text",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "list_type": "must be a list",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "string_too_short": "must not be empty",
        "string_unicode": "is not valid text: it holds a lone surrogate (half of a UTF-16 pair)",
        "none_required": "must be null",
    }.get(kind)
    if text is not None:
        return text
    if kind == "too_short":
        if ctx.get("actual_length") == 0 and field in _NOUNS:
            return f"no {_NOUNS[field][1]}: give at least {_count(ctx.get('min_length'), field)}"
        return f"give at least {_count(ctx.get('min_length'), field)}"
    if kind == "too_long":
        return f"give at most {_count(ctx.get('max_length'), field)}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    bounds = {
        "greater_than": ("more than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}"
    if kind in ("literal_error", "enum"):
        return f"unknown {field or 'value'}; use one of {printable(str(ctx.get('expected', '')))}"
    if kind == "value_error":
        error = ctx.get("error")
        if isinstance(error, TextError):
            return printable(error.reason)
        return printable(str(error if error is not None else err["msg"]))
    return printable(err["msg"])


def explain(errors: Iterable[ErrorDetails], prefix: str = "") -> str:
    """Validation errors as one message a person can act on (at most five reasons)."""
    parts: list[str] = []
    for err in errors:
        if err["type"] == "json_invalid":
            return "malformed JSON body"
        loc = tuple(err.get("loc", ()))
        if err["type"] == "missing" and loc == ("body",):
            return "a JSON body is required"
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, TextError) and error.path:
            loc = (*loc, error.path)
        where = _where((prefix, *loc) if prefix else loc)
        inner = loc[1:] if loc and loc[0] in _WHERE else loc
        field = next((p for p in reversed(inner) if isinstance(p, str)), "")
        reason = _describe(err, field)
        part = f"{where}: {reason}" if where and not reason.startswith(f"no {where}:") else reason
        if part not in parts:
            parts.append(part)
        if len(parts) == 5:
            break
    return "; ".join(parts) or "invalid request"


# -- request bodies ---------------------------------------------------------------------------


class RequestModel(BaseModel):
    """A request body: unknown fields are refused (a misspelt option must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


def _enum_of(name: str) -> Any:
    """JSON schema hook: the kinds registry's categories or extras, read when the schema is built."""

    def extra(schema: dict[str, Any]) -> None:
        from labelloop.kinds import registry  # the kinds (and numpy) load only for the schema

        schema["enum"] = list(getattr(registry, name))

    return extra


class TaskCreate(RequestModel):
    """A new task; it starts with no model."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "reviews",
                    "category": "text-classification",
                    "labels": ["pos", "neg"],
                    "policy": {"min_labels": 20, "auto_label": {"target_accuracy": 0.98}},
                }
            ]
        }
    )

    name: Annotated[Text, AfterValidator(_clean_name)] = Field(min_length=1, max_length=200)
    category: Text = Field(
        description="what the items are: image-classification or text-classification",
        json_schema_extra=_enum_of("CATEGORIES"),
    )
    extra: Text = Field(
        default="multi-class",
        description="multi-class (one label per item) or multi-label",
        json_schema_extra=_enum_of("EXTRAS"),
    )
    labels: list[Label] = Field(min_length=1, max_length=10_000)
    policy: Annotated[Policy, BeforeValidator(check_json)] = Field(default_factory=Policy)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        unique_labels(labels)
        return labels


class TaskUpdate(RequestModel):
    """A change to a task: its name, or policy fields (those given replace the current ones, the
    others stay). Labels and category are fixed: a task with other labels is a new task."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"policy": {"min_labels": 30, "selection": "entropy"}}]}
    )

    name: Annotated[Text, AfterValidator(_clean_name)] | None = Field(
        default=None, min_length=1, max_length=200
    )
    policy: Annotated[Policy, BeforeValidator(check_json)] | None = Field(
        default=None,
        description="policy fields to change, validated as at creation; the others stay",
    )
    archived: bool | None = Field(
        default=None,
        description="true archives the task (kept, no longer handed out to label); false restores it",
    )

    def policy_changes(self) -> dict[str, Any]:
        """The policy fields this request sets (those it does not mention stay as they are)."""
        if self.policy is None:
            return {}
        return self.policy.model_dump(mode="json", include=self.policy.model_fields_set)


class ItemCreate(RequestModel):
    """One item: a data link or, for text tasks, the text itself."""

    data: Text = Field(
        min_length=1,
        max_length=MAX_ITEM_DATA_CHARS,
        description="a data link or, for text tasks, the text",
    )
    external_id: Text | None = Field(default=None, min_length=1, max_length=512)


class ItemsCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"items": [{"data": "/data/img/cat-1.jpg", "external_id": "cat-1"}]},
                {"items": [{"data": "a fine film", "external_id": "review-7"}]},
            ]
        }
    )

    items: list[ItemCreate] = Field(min_length=1)


class SpanCreate(RequestModel):
    """One span of an item's text: character offsets (end exclusive) and its label."""

    start: int = Field(ge=0, le=MAX_ITEM_DATA_CHARS)
    end: int = Field(ge=0, le=MAX_ITEM_DATA_CHARS)
    label: Label


class AnnotationCreate(RequestModel):
    """One item's value (``labels``, or ``spans`` for a text-spans task), with the pre-label that
    was shown (so edit rates are measured)."""

    item_id: Id | None = None
    external_id: Text | None = Field(default=None, min_length=1, max_length=512)
    labels: list[Label] | None = Field(
        default=None,
        description="the item's labels; null retracts the item's earlier label",
        max_length=10_000,
    )
    spans: list[SpanCreate] | None = Field(
        default=None,
        description="a text-spans task's spans (an empty list: no entity); null retracts",
        max_length=10_000,
    )
    annotator: Text | None = Field(default=None, max_length=200)
    shown_version: Version | None = Field(
        default=None, description="the model version whose pre-label was shown (default: current)"
    )
    shown_none: bool = Field(
        default=False, description="true when no pre-label was shown at all (labelled from scratch)"
    )

    @model_validator(mode="after")
    def _one_reference(self) -> AnnotationCreate:
        if (self.item_id is None) == (self.external_id is None):
            raise ValueError("give exactly one of item_id and external_id")
        given = {"labels", "spans"} & self.model_fields_set
        if len(given) != 1:
            raise ValueError("give exactly one of labels and spans (spans for text-spans tasks)")
        return self

    def value(self, field: str) -> list[Any] | None:
        """The value in ``field`` (the task kind's ``value_field``) as it is stored, or
        :class:`ValueError` when the annotation carries its value in the other field."""
        if field not in self.model_fields_set:
            other = "spans" if field == "labels" else "labels"
            raise ValueError(f"this task takes {field}, not {other}")
        if field == "spans":
            return None if self.spans is None else [s.model_dump() for s in self.spans]
        return self.labels


class AnnotationsCreate(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"annotations": [{"item_id": 1, "labels": ["pos"], "annotator": "ann"}]},
                {
                    "annotations": [
                        {"external_id": "review-7", "labels": ["neg"], "shown_none": True}
                    ]
                },
            ]
        }
    )

    annotations: list[AnnotationCreate] = Field(min_length=1)


class AnnotatorTokenCreate(RequestModel):
    """A token for one annotator: it may read and label, and labels under this name."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"annotator": "Ada"}]})

    annotator: Annotated[Text, AfterValidator(_clean_name)] = Field(min_length=1, max_length=200)


class PredictData(RequestModel):
    data: Text = Field(min_length=1, max_length=1_000_000)


class PredictRequest(RequestModel):
    items: list[PredictData] = Field(min_length=1)


class FolderImport(RequestModel):
    """A folder on the server whose images become items, its sub-folders included."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"path": "/data/photos"},
                {"path": "/data/flowers", "labels_from_folders": True, "add_labels": True},
            ]
        }
    )

    path: Text = Field(min_length=1, max_length=4096)
    recursive: bool = Field(default=True, description="images of sub-folders too")
    labels_from_folders: bool = Field(
        default=False,
        description="one folder per class: each image gets the name of the sub-folder it is in "
        "(below path) as a human label, recorded as imported",
    )
    add_labels: bool = Field(
        default=False,
        description="folder names that are not labels of the task become labels (only while the "
        "task has no trained model); without it they are refused",
    )


# -- answers ----------------------------------------------------------------------------------


class ErrorPublic(TypedDict):
    """Every error answer: a stable code, and a message for people."""

    error: str
    detail: Message


class TaskCounts(TypedDict):
    items: int
    ready: int
    pending: int
    failed: int
    human_labelled: int
    model_labelled: int
    unlabelled: int


class AutoLabelState(TypedDict):
    """The served version's auto-labelling threshold and the accuracy it claims."""

    threshold: float | None
    reason: str
    version: NotRequired[int]
    estimated_accuracy: NotRequired[float | None]
    accuracy_lower_bound: NotRequired[float | None]
    target_accuracy: NotRequired[float | None]
    confidence: NotRequired[float | None]
    heldout_labels: NotRequired[int | None]


class TaskPublic(TypedDict):
    id: int
    name: str
    category: str
    extra: str
    kind: TaskKindPublic
    labels: list[str]
    policy: dict[str, Any]
    served_version: int | None
    #: A training job is queued or running.
    training: bool
    counts: TaskCounts
    auto_label: AutoLabelState | None
    created_at: str
    #: Archived: kept with its data, no longer handed out to label.
    archived: bool


class ItemAdded(TypedDict):
    id: int
    external_id: str | None
    created: bool


class ItemsAdded(TypedDict):
    created: int
    existing: int
    items: list[ItemAdded]


class SpanPublic(TypedDict):
    """A span of an item's text (character offsets, end exclusive) and its label."""

    start: int
    end: int
    label: str


class ScoredSpan(SpanPublic):
    score: float | None


#: An annotation's value: labels, or a text-spans task's spans.
LabelValue = list[str] | list[SpanPublic]


class AnnotationPublic(TypedDict):
    """One row of an item's label history (append-only: the revision is the row's id)."""

    revision: int
    labels: LabelValue | None
    source: Literal["human", "model"]
    annotator: str | None
    model_version: int | None
    shown_version: int | None
    edited: bool | None
    created_at: str


class StoredPrediction(TypedDict):
    model_version: int
    labels: LabelValue
    score: float


class ItemPublic(TypedDict):
    id: int
    external_id: str | None
    data: str
    status: Literal["pending", "ready", "failed"]
    error: Message | None
    labels: LabelValue | None
    label_source: Literal["human", "model"] | None
    annotations: list[AnnotationPublic]
    prediction: StoredPrediction | None


class SubmittedAnnotation(TypedDict):
    revision: int
    item_id: int
    edited: bool | None
    shown_version: int | None


class AnnotationsSubmitted(TypedDict):
    annotations: list[SubmittedAnnotation]
    revision: int
    training_triggered: bool
    training_job: int | None
    training_pending: bool


class PredictionPublic(TypedDict):
    """A stored item's pre-label from the served version."""

    item_id: int | None
    status: Literal["ok", "no_model", "failed"]
    model_version: int | None
    labels: NotRequired[list[str] | None]
    score: float | None
    scores: NotRequired[dict[str, float] | None]
    #: A text-spans task's spans, each with its score (in place of labels and scores).
    spans: NotRequired[list[ScoredSpan] | None]
    error: NotRequired[Message]


class DataPrediction(TypedDict):
    status: Literal["ok", "failed"]
    labels: NotRequired[list[str] | None]
    score: float | None
    scores: NotRequired[dict[str, float] | None]
    #: A text-spans task's spans, each with its score (in place of labels and scores).
    spans: NotRequired[list[ScoredSpan] | None]
    error: NotRequired[Message]


class DataPredictions(TypedDict):
    model_version: int | None
    status: Literal["ok", "no_model"]
    predictions: list[DataPrediction]


class NextItem(TypedDict):
    id: int
    external_id: str | None
    data: str
    #: Picked at random among items without a human label: evidence for auto-labelling.
    audit: bool
    prediction: PredictionPublic


class NextItems(TypedDict):
    model_version: int | None
    items: list[NextItem]
    #: Who the items are reserved for (null: reserved for nobody, a look at the queue).
    annotator: str | None
    #: Until when they are reserved (ISO 8601, UTC); asking again renews the lease.
    reserved_until: str | None
    #: How long a lease is (``LABELLOOP_RESERVATION_LEASE_S``).
    lease_seconds: float


class Released(TypedDict):
    #: Reservations given back.
    released: int


class AnnotatorProgress(TypedDict):
    #: null for labels given without a name.
    annotator: str | None
    #: Labels given, corrections included.
    labels: int
    #: Items that carry their label now.
    items: int
    last_label_at: str | None
    #: Labels given within the window (``TaskProgress.window_seconds``).
    recent_labels: int
    #: Labels per hour over the window, from their first label in it; null before any.
    rate_per_hour: float | None
    #: Items reserved for them now.
    holding: int
    #: How often their label matches other people's on items they share (null: none shared).
    agreement: float | None
    shared_items: int


class TaskProgress(TypedDict):
    task_id: int
    #: People each item needs (``policy.overlap``).
    overlap: int
    #: Items that can be labelled (unreadable ones aside).
    items: int
    #: Items with labels from as many people as the overlap asks (or a model label, alone).
    done: int
    #: Items that still need people.
    left: int
    #: Labels people still have to give (an item with an overlap of 3 and one label needs 2).
    labels_needed: int
    human_labels: int
    model_labelled: int
    #: Labels per hour over the window, from the first label in it; null before any.
    rate_per_hour: float | None
    #: ``labels_needed`` at that rate; null without a rate.
    eta_seconds: float | None
    window_seconds: int
    annotators: list[AnnotatorProgress]


class ItemSummary(TypedDict):
    """One item of the item browser's list."""

    id: int
    external_id: str | None
    #: The item's data (a link, or the text), shortened to 300 characters (start and end kept).
    preview: str
    status: Literal["pending", "ready", "failed"]
    error: Message | None
    labels: LabelValue | None
    label_source: Literal["human", "model"] | None
    #: The people whose label it carries now.
    annotators: list[str]
    #: The model's label's version and score (when its label is the model's).
    model_version: int | None
    score: float | None
    #: Flagged as a likely label error (``/suspects``).
    suspect: bool


class ItemsPage(TypedDict):
    #: Items that match the filters (all pages).
    total: int
    offset: int
    limit: int
    items: list[ItemSummary]


class ModelVersionPublic(TypedDict):
    version: int
    status: str
    serving: bool
    promoted: bool
    learner: str
    label_revision: int
    n_labels: int
    metrics: dict[str, Any]
    train_seconds: float | None
    live_accuracy: float | None
    live_n: int
    created_at: str
    promoted_at: str | None


class Promoted(TypedDict):
    task_id: int
    served_version: int


class TrainRequested(TypedDict):
    job_id: int | None
    state: str | None
    #: One more run follows the active one.
    pending: bool


class JobRank(TypedDict):
    rank: int
    #: The Celery worker (node name) that runs the rank's process.
    worker: str | None
    pid: int


class JobWorld(TypedDict):
    """A training job's current distributed world (labelloop.distributed)."""

    size: int
    #: 0 for the first world of a fit; one more each time the world re-forms after a lost rank.
    attempt: int
    #: The fit's rendezvous id (``task-<t>/job-<j>/finetune-<hash>``).
    fit: str
    #: ``host:port`` of the fit's c10d store.
    rendezvous: str
    ranks: list[JobRank]


class JobFit(TypedDict):
    """A distributed fit the job finished: each attempt's world size, the epoch it resumed from."""

    fit: str
    worlds: list[int]
    resumed_from_epoch: int | None


class JobPublic(TypedDict):
    id: int
    kind: str
    state: str
    attempts: int
    worker: str | None
    world: JobWorld | None
    fits: list[JobFit]
    error: Message | None
    result: dict[str, Any] | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class EditRatePoint(TypedDict):
    labels: int
    edit_rate: float


class EditRate(TypedDict):
    overall: float | None
    second_half: float | None
    submitted: int
    edited: int
    curve: list[EditRatePoint]


class VersionMetrics(TypedDict):
    version: int
    serving: bool
    status: str
    n_labels: int
    heldout_accuracy: float | None
    heldout_macro_f1: float | None
    #: Text spans: entity-level precision, recall and F1 on held-out labels (null otherwise).
    heldout_entity_precision: float | None
    heldout_entity_recall: float | None
    heldout_entity_f1: float | None
    train_seconds: float | None
    live_accuracy: float | None
    live_n: int


class TaskMetrics(TypedDict):
    task_id: int
    served_version: int | None
    edit_rate: EditRate
    versions: list[VersionMetrics]


class Suspect(TypedDict):
    item_id: int
    external_id: str | None
    data: str
    #: The labels given and the model's; for text-spans tasks, spans ``{start, end, label}``.
    given: list[Any]
    suggested: list[Any]
    score: float
    annotators: list[str]


class AnnotatorAgreement(TypedDict):
    annotator: str
    shared_items: int
    comparisons: int
    agreement: float


class Suspects(TypedDict):
    version: int | None
    method: str
    suspects: list[Suspect]
    annotators: list[AnnotatorAgreement]
    label_revision: NotRequired[int]
    checked: NotRequired[int]
    flagged: NotRequired[int]


class FolderEntry(TypedDict):
    name: str
    path: str
    images: int


class FolderListing(TypedDict):
    path: str | None
    parent: str | None
    roots: list[str]
    folders: list[FolderEntry]
    images: int
    sample: list[str]


class Skipped(TypedDict):
    """A file (or a line of a CSV or JSON lines file) an import left out, and why."""

    file: str
    reason: str


class FolderImported(TypedDict):
    folder: str
    created: int
    existing: int
    #: Human labels recorded from the folder names (``labels_from_folders``).
    labelled: int
    #: Labels the import added to the task (``add_labels``).
    labels_added: list[str]
    #: Every file left out, by name (the first 1,000), and why; ``skipped_total`` counts all.
    skipped: list[Skipped]
    skipped_total: int


class UploadsAdded(TypedDict):
    created: int
    existing: int
    #: Names of the files that are not images.
    refused: list[str]
    #: The same files, each with the reason.
    skipped: list[Skipped]


class CsvImported(TypedDict):
    created: int
    existing: int
    #: How many rows were left out; ``skipped_rows`` says which (the first 1,000) and why.
    skipped: int
    skipped_rows: list[Skipped]
    text_column: str
    label_column: str | None
    labelled: int
    labels_added: list[str]


class JsonlImported(TypedDict):
    created: int
    existing: int
    #: How many lines were left out; ``skipped_lines`` says which (the first 1,000) and why.
    skipped: int
    skipped_lines: list[Skipped]
    #: Items whose spans (or labels) were recorded as human labels from ``imported``.
    labelled: int
    labels_added: list[str]


class AnnotatorTokenPublic(TypedDict):
    id: int
    annotator: str
    created_at: str
    revoked_at: str | None
    active: bool


class AnnotatorTokenCreated(AnnotatorTokenPublic):
    #: The token itself: shown this once, never stored (only its hash is).
    token: str


class CallerPublic(TypedDict):
    """Who the request's token says the caller is."""

    #: admin: the API token (or anyone, on a server without one); annotator: an annotator's token.
    role: Literal["admin", "annotator"]
    annotator: str | None
    #: Whether this server asks for a token at all.
    token_required: bool


class Health(TypedDict):
    status: Literal["ok"]
    version: str
    #: The job backend's own status (``backend: null`` for a process without one).
    jobs: dict[str, Any]


class ServerInfo(TypedDict):
    """What this server is; the dashboard asks once instead of polling endpoints it may not have."""

    version: str
    #: embedded: jobs run in this server's own worker processes; cluster: on Celery workers.
    mode: Literal["embedded", "cluster"]
    #: The job backend (local, celery), null when none.
    jobs: str | None
    #: Optional endpoints by name (cluster_workers, cluster_machines): whether this server has them.
    endpoints: dict[str, bool]


#: Live Celery workers with their queues and current jobs, and the queues' depths.
WorkersStatus = dict[str, Any]


# -- Label Studio's ML-backend protocol -------------------------------------------------------


class LabelStudioHealth(TypedDict):
    status: Literal["UP"]
    model_class: str
    version: str


class LabelStudioSetup(TypedDict):
    model_version: str | None
    task_id: int


class LabelStudioPrediction(TypedDict):
    result: list[dict[str, Any]]
    score: float | None
    model_version: str | None


class LabelStudioPredictions(TypedDict):
    #: One entry per task: ``[]`` before a model (Label Studio then asks again).
    results: list[LabelStudioPrediction | list[Any]]
    model_version: str | None


class LabelStudioEvent(TypedDict):
    """What a webhook (or the older ``/train`` call) did."""

    status: NotRequired[str]
    action: NotRequired[str]
    n: NotRequired[int]
    ignored: NotRequired[int]
    revision: NotRequired[int]
    training_triggered: NotRequired[bool]
    job_id: NotRequired[int | None]
    reason: NotRequired[str]
    detail: NotRequired[str]
