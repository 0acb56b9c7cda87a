"""The learner contract every model in labelloop follows.

A learner is built from parameters only (the constructor stores them and does nothing else), is
trained with :meth:`Learner.fit`, which returns the learner itself, answers with
:meth:`Learner.predict_proba`, and is written to and read from a folder with :meth:`Learner.save` and
:meth:`Learner.load`. Parameters are explicit keyword arguments of the constructor, read back with
:meth:`Learner.get_params` and changed with :meth:`Learner.set_params` (scikit-learn's convention),
so a task's ``learner_params`` are checked against the signature when the task is created.

A learner names the featurizers that turn an item's content into its input; their output is cached
per task by content hash and featurizer version, so retraining never featurizes an item twice.
**Features are frozen with a model**: the first call of :meth:`Learner.featurizers` decides them
(whatever optional packages are installed then), ``save`` writes each featurizer's exact
configuration into ``learner.json`` and ``load`` rebuilds exactly those, so installing or removing a
package never changes what a served version reads; a model whose featurizer needs a package that is
missing fails to load with a message naming it. ``fit`` may also see the *pool* (features of every
item of the task, labelled or not): learners use it for what unlabelled data can teach (feature
scaling, graphs, self-training).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Self

import joblib  # type: ignore[import-untyped]
import numpy as np

from labelloop.errors import InvalidInput, Unavailable

log = logging.getLogger(__name__)

View = np.ndarray | list[str]

#: Libraries whose versions are recorded with every saved model (a warning on load if they differ).
RECORDED_LIBRARIES = ("labelloop", "numpy", "scikit-learn", "scipy", "spacy", "torch")


class Featurizer(ABC):
    """Turns the bytes of one item into one view of its features (a vector or a text).

    A featurizer is described completely by its :attr:`name` and :meth:`config`; that pair is what a
    saved model records, and :meth:`from_config` rebuilds the same featurizer from it.
    """

    #: Name in :data:`FEATURIZERS` (what ``learner.json`` records).
    name: ClassVar[str]
    #: Name of the view this featurizer fills in :class:`Features`.
    view: ClassVar[str]
    #: Whether the output is worth caching on disk (a decoded image is; a text is not, nor a
    #: vector that costs microseconds).
    cacheable: ClassVar[bool] = True
    #: (importable module, pip package) pairs this featurizer needs at run time.
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):
            FEATURIZERS[cls.name] = cls

    @property
    @abstractmethod
    def version(self) -> str:
        """Changes whenever the output for the same input would change (part of the cache key)."""

    @abstractmethod
    def transform(self, raws: Sequence[bytes]) -> View:
        """Features of several items: an array with one row per item, or a list of texts."""

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this featurizer (JSON-compatible)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Featurizer:
        return cls(**config)

    def describe(self) -> dict[str, Any]:
        """What ``learner.json`` records: name, version and exact configuration."""
        return {"name": self.name, "version": self.version, "config": self.config()}

    @classmethod
    def missing_packages(cls) -> list[str]:
        return [pkg for module, pkg in cls.requires if importlib.util.find_spec(module) is None]

    @classmethod
    def missing_for(cls, config: dict[str, Any]) -> list[str]:
        """Packages missing for a featurizer of this configuration."""
        return cls.missing_packages()


#: Featurizer name -> class; filled by each featurizer class as it is defined.
FEATURIZERS: dict[str, type[Featurizer]] = {}
#: Featurizer name -> the module that defines it (learners load on first use, so a saved model's
#: featurizer may not be defined yet when the model is read).
FEATURIZER_MODULES = {
    "pixels": "labelloop.learners.image",
    "backbone": "labelloop.learners.embedding",
    "backbone-maps": "labelloop.learners.finetune",
    "text": "labelloop.learners.text",
    "minilm": "labelloop.learners.text",
    "minilm-static": "labelloop.learners.text",
    "text-raw": "labelloop.learners.spans",
}


def featurizer_from_record(record: dict[str, Any]) -> Featurizer:
    """The featurizer a saved model recorded; a clear error if its packages are missing."""
    name = str(record.get("name", ""))
    if name not in FEATURIZERS and name in FEATURIZER_MODULES:
        importlib.import_module(FEATURIZER_MODULES[name])
    cls = FEATURIZERS.get(name)
    if cls is None:
        raise InvalidInput(f"this model reads features of an unknown kind: {record!r}")
    missing = cls.missing_for(dict(record.get("config") or {}))
    if missing:
        raise Unavailable(
            f"this model was trained with the {cls.name!r} featurizer, which needs the Python "
            f"package(s) {', '.join(missing)}; install them (pip install {' '.join(missing)}) "
            "to serve it"
        )
    fz = cls.from_config(dict(record.get("config") or {}))
    if record.get("version") and fz.version != record["version"]:
        raise InvalidInput(
            f"featurizer {cls.name!r} now computes version {fz.version!r}, "
            f"but this model was trained on {record['version']!r}"
        )
    return fz


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

    def only(self, views: Sequence[str]) -> Features:
        """The same items with only the named views (a candidate reads its own views)."""
        return Features({v: self.views[v] for v in views if v in self.views})

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


def library_versions() -> dict[str, str]:
    out = {}
    for lib in RECORDED_LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


class Learner(ABC):
    """One model family for one category of task.

    ``labels`` is the task's full label set; for classification, targets are an indicator matrix
    with one column per label (exactly one 1 per row for multi-class tasks), and ``predict_proba``
    answers with one column per label: a distribution for multi-class tasks, independent
    probabilities for multi-label ones. A kind whose values are not label sets (text spans) gives
    its learners the values as targets and reads one answer object per item back (an object
    array): the task's kind (:mod:`labelloop.kinds`) says how.

    Subclasses declare their parameters as keyword-only arguments of ``__init__`` with type hints
    and defaults, and store each under its own name; nothing else happens in the constructor.
    """

    #: Registry name, written into every saved model.
    name: ClassVar[str]
    #: Whether ``fit`` can start from an earlier fitted learner (``init``).
    supports_warm_start: ClassVar[bool] = False

    def __init__(self, labels: Sequence[str], multi_label: bool = False) -> None:
        self.labels = list(labels)
        self.multi_label = multi_label

    # -- parameters -----------------------------------------------------------------------------

    @classmethod
    def param_names(cls) -> list[str]:
        """The keyword parameters of the constructor (scikit-learn's ``_get_param_names``)."""
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name not in ("labels", "multi_label")
        ]

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Checks beyond names and types (run when a task is created or patched); raise
        :class:`InvalidInput` naming the problem. Names and types are checked by the registry."""
        return None

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> Self:
        known = set(self.param_names())
        for name, value in params.items():
            if name not in known:
                raise InvalidInput(
                    f"learner {self.name!r} has no parameter {name!r}; "
                    f"its parameters: {', '.join(sorted(known)) or 'none'}"
                )
            setattr(self, name, value)
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as a dict (read-only view of :meth:`get_params`)."""
        return self.get_params()

    # -- features -------------------------------------------------------------------------------

    def pool_featurizers(self, current: str | None) -> list[Featurizer]:
        """What every item of a task's pool is featurized with as it arrives, ``current`` being
        the learner of the task's newest version: by default this learner's own featurizers (a
        learner that chooses among others may wait until the choice needs the costly ones)."""
        return self.featurizers()

    def featurizers(self) -> list[Featurizer]:
        """The featurizers whose views ``fit`` and ``predict_proba`` read.

        Decided once per learner (the first call) and then frozen: a loaded model answers with the
        featurizers it was saved with, whatever is installed now.
        """
        frozen: list[Featurizer] | None = getattr(self, "_featurizers", None)
        if frozen is None:
            frozen = self._featurizers = self.make_featurizers()
        return list(frozen)

    @abstractmethod
    def make_featurizers(self) -> list[Featurizer]:
        """The featurizers this learner would read if it were trained now."""

    def views(self) -> list[str]:
        return [f.view for f in self.featurizers()]

    # -- training and answers -------------------------------------------------------------------

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
        """An unfitted learner with the same parameters (and the same frozen featurizers)."""
        twin = type(self)(self.labels, multi_label=self.multi_label, **self.get_params())
        frozen = getattr(self, "_featurizers", None)
        if frozen is not None:
            twin._featurizers = list(frozen)
        return twin

    # -- persistence ----------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "learner": self.name,
            "labels": self.labels,
            "multi_label": self.multi_label,
            "params": self.get_params(),
            "featurizers": [f.describe() for f in self.featurizers()],
            "libraries": library_versions(),
        }
        (folder / "learner.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        joblib.dump(self._state(), folder / "state.joblib", compress=1)

    @classmethod
    def load(cls, folder: Path) -> Self:
        meta = json.loads((folder / "learner.json").read_text())
        if meta["learner"] != cls.name:
            raise InvalidInput(f"{folder} holds a {meta['learner']!r} model, not {cls.name!r}")
        known = set(cls.param_names())
        params = {k: v for k, v in (meta.get("params") or {}).items() if k in known}
        dropped = sorted(set(meta.get("params") or {}) - known)
        if dropped:
            log.warning("%s: ignoring parameters this version does not know: %s", folder, dropped)
        learner = cls(meta["labels"], multi_label=meta["multi_label"], **params)
        learner._featurizers = [
            featurizer_from_record(r) if isinstance(r, dict) else learner._legacy_featurizer(r)
            for r in meta.get("featurizers", [])
        ]
        saved_with = meta.get("libraries") or {}
        now = library_versions()
        changed = {k: (v, now.get(k)) for k, v in saved_with.items() if now.get(k) != v}
        if changed:
            log.warning(
                "%s was saved with other library versions (saved, now): %s", folder, changed
            )
        learner._restore(joblib.load(folder / "state.joblib"))
        return learner

    def _legacy_featurizer(self, version: str) -> Featurizer:
        """Models saved before featurizers were recorded whole list version strings only."""
        for cls in FEATURIZERS.values():
            legacy = getattr(cls, "legacy", None)
            fz: Featurizer | None = legacy(version) if legacy is not None else None
            if fz is not None:
                missing = cls.missing_packages()
                if missing:
                    raise Unavailable(
                        f"this model needs the Python package(s) {', '.join(missing)}"
                    )
                return fz
        raise InvalidInput(f"this model reads features of an unknown version {version!r}")


def indicator_to_classes(Y: np.ndarray) -> np.ndarray:
    """Class index of each row of a multi-class indicator matrix."""
    classes: np.ndarray = np.asarray(Y).argmax(axis=1)
    return classes


def spread_columns(proba: np.ndarray, seen: np.ndarray, n_labels: int) -> np.ndarray:
    """Scores over the classes a model saw, placed in the task's full label space (zeros elsewhere)."""
    out = np.zeros((proba.shape[0], n_labels), dtype=np.float64)
    out[:, seen] = proba
    return out
