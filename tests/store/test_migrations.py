"""The migrations build exactly the tables the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from labelloop.store.db import make_engine, migrate
from labelloop.store.models import Base
from tests.support import pg_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An empty PostgreSQL database: here the migrations build the schema from nothing (other
    tests copy a database they built once)."""
    with pg_database() as url:
        yield url


def test_migrated_schema_matches_the_models(tmp_path: Path, database_url: str | None) -> None:
    url = database_url or f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
