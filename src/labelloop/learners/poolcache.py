"""Per-process cache of what a learner derives from the pool alone (graphs, fitted vectorizers).

Deriving it does not depend on labels, so the k folds of cross-validation and the final fit of a
training job, and the next jobs while no item is added, all reuse one copy.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
_LOCK = threading.Lock()
_ENTRIES: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
MAX_ENTRIES = 8


def fingerprint_array(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes(), usedforsecurity=False).hexdigest()


def fingerprint_texts(texts: Iterable[str]) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def cached(key: tuple[Any, ...], build: Callable[[], T]) -> T:
    with _LOCK:
        if key in _ENTRIES:
            _ENTRIES.move_to_end(key)
            return _ENTRIES[key]  # type: ignore[no-any-return]
    value = build()
    with _LOCK:
        _ENTRIES[key] = value
        while len(_ENTRIES) > MAX_ENTRIES:
            _ENTRIES.popitem(last=False)
    return value
