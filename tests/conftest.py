"""Shared fixtures: settings on a temporary data root, the store on SQLite or PostgreSQL, a live app."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from labelloop.api.app import create_app
from labelloop.config import Settings
from labelloop.demo import free_port
from labelloop.jobs.local import LocalJobs
from labelloop.loop.cache import FEATURES
from labelloop.runtime import Runtime
from tests.support import (
    migrated_pg_template,
    migrated_sqlite_template,
    pg_database,
    wait_until,
)

# Image tasks in the general tests choose among pixel learners only, so that they never push
# hundreds of digits through EfficientNet; tests/learners and tests/loop/test_training.py turn the
# backbone on where they test it.
os.environ.setdefault("LABELLOOP_IMAGE_BACKBONE", "none")
# The sentence encoder's ONNX graph is exported once for every test's data root (and server).
os.environ.setdefault(
    "LABELLOOP_ENCODER_DIR",
    os.path.join(tempfile.gettempdir(), f"labelloop-test-encoders-{os.getuid()}"),
)


@pytest.fixture(autouse=True)
def fresh_feature_cache() -> None:
    """Each test opens its own data folder, where task ids start again at 1: features that an
    earlier test computed in this process must not stand in for this test's own."""
    FEATURES.clear()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """The migrated PostgreSQL database that each test's own database is a copy of."""
    with migrated_pg_template() as name:
        yield name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite store file that each test's runtime starts from (a copy of its own)."""
    return migrated_sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test (schema migrated), dropped afterwards."""
    with pg_database(template=pg_template) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Each test that takes this runs once on SQLite (the default) and once on PostgreSQL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    return root


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None, image_root: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, import_roots=[image_root]
    )


@pytest.fixture
def rt_data(settings: Settings) -> Path:
    """The data root of the test runtime."""
    return settings.resolved_data_dir


@pytest.fixture
def rt(settings: Settings, sqlite_template: Path) -> Iterator[Runtime]:
    if settings.database_url is None:  # a copy of the migrated store, as after a first start
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sqlite_template, settings.resolved_data_dir / "labelloop.db")
    runtime = Runtime(settings, migrate_schema=True)
    yield runtime
    runtime.close()


@pytest.fixture
def app_client(rt: Runtime) -> Iterator[TestClient]:
    """The whole app over HTTP, with jobs on a thread pool (fast and deterministic for tests)."""
    rt.attach_jobs(LocalJobs(rt, workers=2, threads=True))
    with TestClient(create_app(rt)) as client:
        yield client


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


@pytest.fixture
def digit_files(image_root: Path, digits: tuple[np.ndarray, np.ndarray]) -> list[tuple[str, str]]:
    """The first 300 digits as PNG files below the import root: (path, true label)."""
    from labelloop.demo import write_digits

    return [(str(p), label) for p, label in write_digits(image_root, limit=300)]


@pytest.fixture
def live_url(rt: Runtime) -> Iterator[str]:
    """The whole app served by uvicorn in a thread (jobs on threads), as ``labelloop serve`` does."""
    rt.attach_jobs(LocalJobs(rt, workers=2, threads=True))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("the test server exited while starting")
        return server.started

    wait_until(started, 30, "the test server to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


@pytest.fixture(scope="session")
def broker_vhost() -> Iterator[str]:
    """A vhost of this test session's own on the machine's RabbitMQ (deleted afterwards)."""
    from tests.celery_support import vhost

    with vhost("labelloop-session") as url:
        yield url
