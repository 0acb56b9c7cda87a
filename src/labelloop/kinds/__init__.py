"""Task kinds: what an annotation is, per kind of task (:mod:`labelloop.kinds.base`), and the
registry of kinds (:mod:`labelloop.kinds.registry`)."""

from labelloop.kinds.base import Scores, TaskKind, Value
from labelloop.kinds.registry import CATEGORIES, EXTRAS, kind_for, media_of

__all__ = ["CATEGORIES", "EXTRAS", "Scores", "TaskKind", "Value", "kind_for", "media_of"]
