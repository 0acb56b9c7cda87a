"""Hot swap: a request that started on a version finishes on it; the next one sees the new one."""

from __future__ import annotations

import threading

import numpy as np

from labelloop.learners.base import Features, Learner
from labelloop.loop.cache import ModelCache


class Slow(Learner):
    name = "slow-test"

    def __init__(self, labels, multi_label=False, *, answer: int = 0):  # type: ignore[no-untyped-def]
        super().__init__(labels, multi_label)
        self.answer = answer
        self.entered = threading.Event()
        self.release = threading.Event()

    def make_featurizers(self):  # type: ignore[no-untyped-def]
        return []

    def fit(self, X, Y, pool=None, init=None):  # type: ignore[no-untyped-def]
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        self.entered.set()
        self.release.wait(10)
        out = np.zeros((1, len(self.labels)))
        out[0, int(self.answer)] = 1.0
        return out

    def _state(self):  # type: ignore[no-untyped-def]
        return {}

    def _restore(self, state):  # type: ignore[no-untyped-def]
        pass


def test_in_flight_request_keeps_its_version() -> None:
    cache = ModelCache(max_bytes=10**9)
    v0 = Slow(["a", "b"], answer=0)
    v1 = Slow(["a", "b"], answer=1)
    served = {"version": 0}
    loaders = {0: lambda: (v0, 1), 1: lambda: (v1, 1)}
    answers: list[int] = []

    def request() -> None:
        # What a request does: resolve the served version once, then use that model to the end.
        version = served["version"]
        model = cache.get(1, version, loaders[version])
        answers.append(int(model.predict_proba(Features()).argmax()))

    first = threading.Thread(target=request)
    first.start()
    assert v0.entered.wait(10)
    served["version"] = 1  # the promotion commits while the first request is in flight
    v1.release.set()
    request()  # the next request answers with the new version at once
    v0.release.set()
    first.join(10)
    assert answers == [1, 0]


def test_cache_is_bounded_and_keyed_by_task() -> None:
    cache = ModelCache(max_bytes=100)
    a, b, c = Slow(["x"], answer=0), Slow(["x"], answer=0), Slow(["x"], answer=0)
    assert cache.get(1, 0, lambda: (a, 60)) is a
    assert cache.get(2, 0, lambda: (b, 60)) is b  # same version number, other task: other model
    assert cache.keys() == [(2, 0)]  # the least recently used went over the bound
    assert cache.get(1, 0, lambda: (c, 10)) is c
    cache.drop_task(2)
    assert cache.keys() == [(1, 0)]


def test_the_cache_keeps_two_versions_per_task() -> None:
    cache = ModelCache(max_bytes=10**9)
    models = {(t, v): Slow(["a", "b"], answer=0) for t in (1, 2) for v in range(5)}
    for v in range(5):
        for t in (1, 2):
            assert cache.get(t, v, lambda t=t, v=v: (models[t, v], 1)) is models[t, v]
    assert sorted(cache.keys()) == [(1, 3), (1, 4), (2, 3), (2, 4)]
    cache.get(1, 3, lambda: (models[1, 3], 1))  # used again: the newest one goes first
    cache.get(1, 0, lambda: (models[1, 0], 1))  # a rollback
    assert sorted(cache.keys()) == [(1, 0), (1, 3), (2, 3), (2, 4)]
