"""Learners: one contract (:mod:`.base`), one registry (:mod:`.registry`).

The registry's names are read from :mod:`.registry` on first use, so that importing this package
(for :mod:`.base` or :mod:`.backbones`) does not import the learners themselves.
"""

from typing import TYPE_CHECKING, Any

from labelloop.learners.base import Features, Featurizer, Learner

if TYPE_CHECKING:
    from labelloop.learners.registry import (
        REGISTRY,
        learner_by_name,
        learner_class,
        make_learner,
    )

__all__ = [
    "REGISTRY",
    "Features",
    "Featurizer",
    "Learner",
    "learner_by_name",
    "learner_class",
    "make_learner",
]

_FROM_REGISTRY = frozenset({"REGISTRY", "learner_by_name", "learner_class", "make_learner"})


def __getattr__(name: str) -> Any:
    if name in _FROM_REGISTRY:
        from labelloop.learners import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
