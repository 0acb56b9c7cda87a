"""The one explicit list of learners, keyed by task category and extra, and the one place where a
task's learner parameters are checked (names and types, against the learner's signature)."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from labelloop.errors import InvalidInput
from labelloop.kinds.registry import CATEGORIES, EXTRAS
from labelloop.learners import backbones
from labelloop.learners.auto import CANDIDATES, AutoImage
from labelloop.learners.base import Learner
from labelloop.learners.embedding import EmbeddingLogReg, EmbeddingSpread
from labelloop.learners.finetune import FineTune
from labelloop.learners.image import PoolSVM
from labelloop.learners.text import TfidfSVM

#: (category, extra) -> learners that can serve it; the first is the default.
REGISTRY: dict[tuple[str, str], list[type[Learner]]] = {
    ("image-classification", "multi-class"): [
        AutoImage,
        PoolSVM,
        EmbeddingLogReg,
        EmbeddingSpread,
        FineTune,
    ],
    ("image-classification", "multi-label"): [AutoImage, PoolSVM, EmbeddingLogReg, EmbeddingSpread],
    ("text-classification", "multi-class"): [TfidfSVM],
    ("text-classification", "multi-label"): [TfidfSVM],
}


def has_learner(category: str, extra: str) -> bool:
    """Whether any learner serves tasks of this category and extra (a task kind may have none
    yet: its tasks are labelled without a model)."""
    return bool(REGISTRY.get((category, extra)))


def learner_class(category: str, extra: str, name: str | None = None) -> type[Learner]:
    """The learner for a task; ``name`` picks a non-default one."""
    options = REGISTRY.get((category, extra))
    if not options:
        raise InvalidInput(
            f"no learner for category {category!r} with extra {extra!r}; "
            f"categories: {', '.join(CATEGORIES)}; extras: {', '.join(EXTRAS)}"
        )
    if name is None:
        return options[0]
    for cls in options:
        if cls.name == name:
            return cls
    raise InvalidInput(
        f"learner {name!r} does not serve {category}/{extra}; "
        f"choose one of {', '.join(c.name for c in options)}"
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
    unknown = [n for n in out.get("candidates") or [] if n not in CANDIDATES]
    if cls is AutoImage and unknown:
        raise InvalidInput(
            f"unknown candidate learner(s) {', '.join(unknown)}; "
            f"choose among {', '.join(CANDIDATES)}"
        )
    return out


def make_learner(
    category: str, extra: str, labels: Sequence[str], name: str | None = None, **params: Any
) -> Learner:
    cls = learner_class(category, extra, name)
    checked = check_params(category, extra, name, params)
    return cls(labels, multi_label=(extra == "multi-label"), **checked)


def learner_by_name(name: str) -> type[Learner]:
    for options in REGISTRY.values():
        for cls in options:
            if cls.name == name:
                return cls
    raise InvalidInput(f"unknown learner {name!r}")
