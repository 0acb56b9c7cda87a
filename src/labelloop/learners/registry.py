"""The one explicit list of learners, keyed by task category and extra."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from labelloop.errors import InvalidInput
from labelloop.learners.base import Learner
from labelloop.learners.image import PoolSVM
from labelloop.learners.text import TfidfSVM

CATEGORIES = ("image-classification", "text-classification")
EXTRAS = ("multi-class", "multi-label")

#: (category, extra) -> learners that can serve it; the first is the default.
REGISTRY: dict[tuple[str, str], list[type[Learner]]] = {
    ("image-classification", "multi-class"): [PoolSVM],
    ("image-classification", "multi-label"): [PoolSVM],
    ("text-classification", "multi-class"): [TfidfSVM],
    ("text-classification", "multi-label"): [TfidfSVM],
}


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


def make_learner(
    category: str, extra: str, labels: Sequence[str], name: str | None = None, **params: Any
) -> Learner:
    cls = learner_class(category, extra, name)
    return cls(labels, multi_label=(extra == "multi-label"), **params)


def learner_by_name(name: str) -> type[Learner]:
    for options in REGISTRY.values():
        for cls in options:
            if cls.name == name:
                return cls
    raise InvalidInput(f"unknown learner {name!r}")
