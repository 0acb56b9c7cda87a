"""Learners: one contract (:mod:`.base`), one registry (:mod:`.registry`)."""

from labelloop.learners.base import Features, Featurizer, Learner
from labelloop.learners.registry import REGISTRY, learner_by_name, learner_class, make_learner

__all__ = [
    "REGISTRY",
    "Features",
    "Featurizer",
    "Learner",
    "learner_by_name",
    "learner_class",
    "make_learner",
]
