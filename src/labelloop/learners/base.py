"""The learner contract every model in labelloop follows.

A learner is built from parameters only (the constructor stores them and does nothing else), is
trained with :meth:`Learner.fit`, which returns the learner itself, answers with
:meth:`Learner.predict_proba`, and is written to and read from a folder with :meth:`Learner.save` and
:meth:`Learner.load`. It names the featurizers that turn an item's content into its input; their
output is cached per task by content hash and featurizer version, so retraining never featurizes an
item twice. ``fit`` may also see the *pool* (features of every item of the task, labelled or not):
learners use it for what unlabelled data can teach (feature scaling, graphs, self-training).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import joblib  # type: ignore[import-untyped]
import numpy as np

from labelloop.errors import InvalidInput

View = np.ndarray | list[str]


class Featurizer(ABC):
    """Turns the bytes of one item into one view of its features (a vector or a text)."""

    #: Name of the view this featurizer fills in :class:`Features`.
    view: ClassVar[str]
    #: Whether the output is worth caching on disk (a decoded image is; a text is not).
    cacheable: ClassVar[bool] = True

    @property
    @abstractmethod
    def version(self) -> str:
        """Changes whenever the output for the same input would change (part of the cache key)."""

    @abstractmethod
    def transform(self, raws: Sequence[bytes]) -> View:
        """Features of several items: an array with one row per item, or a list of texts."""


@dataclass
class Features:
    """Inputs of a batch of items: one entry per view, each with one row per item."""

    views: dict[str, View] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.views.values()))) if self.views else 0

    def take(self, index: Sequence[int] | np.ndarray) -> Features:
        idx = np.asarray(index, dtype=int)
        out: dict[str, View] = {}
        for name, view in self.views.items():
            out[name] = view[idx] if isinstance(view, np.ndarray) else [view[i] for i in idx]
        return Features(out)

    def array(self, name: str) -> np.ndarray:
        view = self.views[name]
        if not isinstance(view, np.ndarray):
            raise TypeError(f"view {name!r} is not an array")
        return view

    def texts(self, name: str) -> list[str]:
        view = self.views[name]
        if isinstance(view, np.ndarray):
            raise TypeError(f"view {name!r} is not a list of texts")
        return view

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Features()
        out: dict[str, View] = {}
        for name in parts[0].views:
            first = parts[0].views[name]
            if isinstance(first, np.ndarray):
                out[name] = np.concatenate([p.array(name) for p in parts])
            else:
                out[name] = [t for p in parts for t in p.texts(name)]
        return Features(out)


class Learner(ABC):
    """One model family for one category of task.

    ``labels`` is the task's full label set; targets are always an indicator matrix with one column
    per label (exactly one 1 per row for multi-class tasks), and ``predict_proba`` answers with one
    column per label: a distribution for multi-class tasks, independent probabilities for
    multi-label ones.
    """

    #: Registry name, written into every saved model.
    name: ClassVar[str]
    #: Whether ``fit`` can start from an earlier fitted learner (``init``).
    supports_warm_start: ClassVar[bool] = False

    def __init__(self, labels: Sequence[str], multi_label: bool = False, **params: Any) -> None:
        self.labels = list(labels)
        self.multi_label = multi_label
        self.params = dict(params)

    @abstractmethod
    def featurizers(self) -> list[Featurizer]:
        """The featurizers whose views ``fit`` and ``predict_proba`` read."""

    @abstractmethod
    def fit(
        self,
        X: Features,
        Y: np.ndarray,
        pool: Features | None = None,
        init: Learner | None = None,
    ) -> Self:
        """Train on ``X`` with targets ``Y``; ``pool`` holds every item's features (may include X)."""

    @abstractmethod
    def predict_proba(self, X: Features) -> np.ndarray:
        """Scores with one row per item and one column per label."""

    @abstractmethod
    def _state(self) -> Any:
        """The fitted state that :meth:`save` writes (anything joblib can store)."""

    @abstractmethod
    def _restore(self, state: Any) -> None:
        """Inverse of :meth:`_state`."""

    def clone(self) -> Self:
        """An unfitted learner with the same parameters."""
        return type(self)(self.labels, multi_label=self.multi_label, **self.params)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "learner": self.name,
            "labels": self.labels,
            "multi_label": self.multi_label,
            "params": self.params,
            "featurizers": [f.version for f in self.featurizers()],
        }
        (folder / "learner.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        joblib.dump(self._state(), folder / "state.joblib", compress=1)

    @classmethod
    def load(cls, folder: Path) -> Self:
        meta = json.loads((folder / "learner.json").read_text())
        if meta["learner"] != cls.name:
            raise InvalidInput(f"{folder} holds a {meta['learner']!r} model, not {cls.name!r}")
        learner = cls(meta["labels"], multi_label=meta["multi_label"], **meta["params"])
        learner._restore(joblib.load(folder / "state.joblib"))
        return learner


def indicator_to_classes(Y: np.ndarray) -> np.ndarray:
    """Class index of each row of a multi-class indicator matrix."""
    classes: np.ndarray = np.asarray(Y).argmax(axis=1)
    return classes


def spread_columns(proba: np.ndarray, seen: np.ndarray, n_labels: int) -> np.ndarray:
    """Scores over the classes a model saw, placed in the task's full label space (zeros elsewhere)."""
    out = np.zeros((proba.shape[0], n_labels), dtype=np.float64)
    out[:, seen] = proba
    return out
