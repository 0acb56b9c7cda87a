"""The one explicit list of learners, keyed by task category and extra, and the one place where a
task's learner parameters are checked (names and types, against the learner's signature).

The list names each learner by where it lives; its module (scikit-learn, torch) is imported only
when that learner is asked for, so that processes which never build a model (a cluster's API, the
role services, the CLI) start without them.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from labelloop.errors import InvalidInput
from labelloop.kinds.registry import CATEGORIES, EXTRAS
from labelloop.learners import backbones
from labelloop.learners.base import Learner

#: Learner name -> "module:class" (imported on first use).
LEARNERS: dict[str, str] = {
    "auto": "labelloop.learners.auto:AutoImage",
    "pool-svm": "labelloop.learners.image:PoolSVM",
    "embedding-logreg": "labelloop.learners.embedding:EmbeddingLogReg",
    "embedding-spread": "labelloop.learners.embedding:EmbeddingSpread",
    "finetune": "labelloop.learners.finetune:FineTune",
    "tfidf-svm": "labelloop.learners.text:TfidfSVM",
    "spacy-ner": "labelloop.learners.spans:SpacyNER",
}

#: (category, extra) -> names of the learners that can serve it; the first is the default.
OPTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("image-classification", "multi-class"): (
        "auto",
        "pool-svm",
        "embedding-logreg",
        "embedding-spread",
        "finetune",
    ),
    ("image-classification", "multi-label"): (
        "auto",
        "pool-svm",
        "embedding-logreg",
        "embedding-spread",
    ),
    ("text-classification", "multi-class"): ("tfidf-svm",),
    ("text-classification", "multi-label"): ("tfidf-svm",),
    ("text-spans", "multi-class"): ("spacy-ner",),
}


def _load(name: str) -> type[Learner]:
    """The class of the learner called ``name`` (its module imported now)."""
    module, attr = LEARNERS[name].split(":")
    cls: type[Learner] = getattr(importlib.import_module(module), attr)
    if cls.name != name:  # the table and the class must agree
        raise RuntimeError(f"learner table names {LEARNERS[name]} {name!r}, it says {cls.name!r}")
    return cls


class _Registry(Mapping[tuple[str, str], list[type[Learner]]]):
    """``REGISTRY[(category, extra)]``: the learner classes, imported when looked up."""

    def __getitem__(self, key: tuple[str, str]) -> list[type[Learner]]:
        return [_load(n) for n in OPTIONS[key]]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(OPTIONS)

    def __len__(self) -> int:
        return len(OPTIONS)


#: (category, extra) -> learners that can serve it; the first is the default.
REGISTRY: Mapping[tuple[str, str], list[type[Learner]]] = _Registry()


def has_learner(category: str, extra: str) -> bool:
    """Whether any learner serves tasks of this category and extra (a task kind may have none
    yet: its tasks are labelled without a model)."""
    return bool(OPTIONS.get((category, extra)))


def learner_class(category: str, extra: str, name: str | None = None) -> type[Learner]:
    """The learner for a task; ``name`` picks a non-default one."""
    options = OPTIONS.get((category, extra))
    if not options:
        raise InvalidInput(
            f"no learner for category {category!r} with extra {extra!r}; "
            f"categories: {', '.join(CATEGORIES)}; extras: {', '.join(EXTRAS)}"
        )
    if name is None:
        return _load(options[0])
    if name in options:
        return _load(name)
    raise InvalidInput(
        f"learner {name!r} does not serve {category}/{extra}; choose one of {', '.join(options)}"
    )


def check_params(
    category: str, extra: str, learner_name: str | None, params: dict[str, Any]
) -> dict[str, Any]:
    """A task's ``learner_params``, checked against its learner's signature.

    An unknown name or a value of the wrong type raises :class:`InvalidInput` naming it (HTTP
    422 at task creation or patch, instead of a failure at training time). Returns the values as
    the learner will receive them.
    """
    cls = learner_class(category, extra, learner_name)
    names = cls.param_names()
    hints = typing.get_type_hints(cls.__init__)
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key not in names:
            raise InvalidInput(
                f"learner {cls.name!r} has no parameter {key!r}; "
                f"its parameters: {', '.join(names) or 'none'}"
            )
        try:
            out[key] = TypeAdapter(hints[key]).validate_python(value, strict=False)
        except ValidationError as exc:
            raise InvalidInput(
                f"learner parameter {key!r} of {cls.name!r}: {exc.errors()[0]['msg']} "
                f"(got {value!r})"
            ) from None
    if out.get("backbone") is not None:
        spec = backbones.parse(out["backbone"])
        if spec is not None:
            backbones.resolve(spec)  # the file must exist and be readable now
    cls.check_params(out)
    return out


def make_learner(
    category: str, extra: str, labels: Sequence[str], name: str | None = None, **params: Any
) -> Learner:
    cls = learner_class(category, extra, name)
    checked = check_params(category, extra, name, params)
    return cls(labels, multi_label=(extra == "multi-label"), **checked)


def learner_by_name(name: str) -> type[Learner]:
    if name not in LEARNERS:
        raise InvalidInput(f"unknown learner {name!r}")
    return _load(name)
