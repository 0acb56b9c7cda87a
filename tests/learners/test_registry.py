"""The learner registry is lazy: processes that never build a model start without scikit-learn,
scipy or torch, and the registry still answers the same questions once a learner is asked for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from labelloop.errors import InvalidInput
from labelloop.learners import REGISTRY, learner_by_name, learner_class
from labelloop.learners.registry import LEARNERS, OPTIONS

HEAVY = ("sklearn", "scipy", "torch", "sentence_transformers")


def _loaded_after(code: str) -> list[str]:
    """Which of :data:`HEAVY` a fresh interpreter has imported after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("jobs", ["local", "celery"])
def test_the_api_starts_without_scikit_learn_or_torch(jobs: str, tmp_path: object) -> None:
    """The app, its job backend and the registry's names, built as ``serve`` builds them."""
    code = f"""
from labelloop.api.app import create_app
from labelloop.config import Settings
from labelloop.jobs.factory import make_backend
from labelloop.learners.registry import CATEGORIES, OPTIONS
from labelloop.runtime import Runtime
rt = Runtime(Settings(data_dir={str(tmp_path)!r} + "/d", jobs={jobs!r}), migrate_schema=True)
backend = make_backend(rt)
create_app(rt)
assert OPTIONS and CATEGORIES
"""
    assert _loaded_after(code) == []


def test_a_learner_loads_when_it_is_asked_for() -> None:
    assert "sklearn" in _loaded_after(
        "from labelloop.learners import learner_by_name; learner_by_name('tfidf-svm')"
    )


def test_the_lazy_table_names_the_classes_it_loads() -> None:
    for name in LEARNERS:
        assert learner_by_name(name).name == name
    assert set(REGISTRY) == set(OPTIONS)
    for key, names in OPTIONS.items():
        assert [c.name for c in REGISTRY[key]] == list(names)
        assert learner_class(*key) is REGISTRY[key][0]
    with pytest.raises(InvalidInput, match="unknown learner"):
        learner_by_name("nope")
    with pytest.raises(InvalidInput, match="choose one of auto"):
        learner_class("image-classification", "multi-class", "tfidf-svm")


def test_asking_whether_embeddings_are_installed_does_not_load_torch() -> None:
    """The API asks this when text items arrive (which featurizers cost work)."""
    loaded = _loaded_after(
        "from labelloop.learners.text import embeddings_available\nassert embeddings_available()"
    )
    assert "torch" not in loaded and "sentence_transformers" not in loaded
