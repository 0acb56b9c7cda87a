from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.config import Settings, load_settings
from labelloop.errors import ConfigError


def test_defaults_are_the_embedded_setup(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.jobs == "local"
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'labelloop.db'}"
    assert s.allowed_roots == ()  # the data root is never one: it holds the store and tokens


def test_import_roots_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LABELLOOP_IMPORT_ROOTS", f"{tmp_path}/a:{tmp_path}/b")
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path / "data"))
    s = load_settings()
    assert s.allowed_roots == (
        (tmp_path / "a").resolve(),
        (tmp_path / "b").resolve(),
    )


def test_production_refuses_default_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LABELLOOP_CLUSTER_TOKEN"):
        load_settings(
            environment="production", cluster_token="dev-cluster-token", data_dir=tmp_path
        )
    # Workers and services need no cluster token (the agent gives them none); the commands that
    # need it refuse to run without one in production (tests/cluster/test_security.py).
    assert load_settings(environment="production", data_dir=tmp_path).cluster_token is None
    with pytest.raises(ConfigError, match="guest"):
        load_settings(environment="production", cluster_token="s3cret-token-xyz", jobs="celery")
    ok = load_settings(
        environment="production", cluster_token="s3cret-token-xyz", data_dir=tmp_path
    )
    assert ok.environment == "production"


def test_bad_values_are_reported_by_name() -> None:
    with pytest.raises(ConfigError, match="local_workers"):
        load_settings(local_workers=0)


def test_secrets_do_not_show_in_repr() -> None:
    s = Settings(cluster_token="very-secret-value", api_token="another-secret-token")
    assert "very-secret-value" not in repr(s) and "another-secret-token" not in str(s.model_dump())


@pytest.mark.parametrize("token", ["", "   ", "short", "fifteen-chars-x", " padded-token-value-1 "])
def test_an_empty_or_short_api_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, token: str
) -> None:
    """``LABELLOOP_API_TOKEN=""`` once let an empty bearer in; a short token is guessable."""
    monkeypatch.setenv("LABELLOOP_API_TOKEN", token)
    with pytest.raises(ConfigError, match="LABELLOOP_API_TOKEN") as info:
        load_settings(data_dir=tmp_path)
    assert "Value error" not in info.value.message
    assert not token.strip() or token.strip() not in info.value.message  # never echo a secret


def test_a_long_api_token_is_taken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LABELLOOP_API_TOKEN", "0123456789abcdef")
    token = load_settings(data_dir=tmp_path).api_token
    assert token is not None and token.get_secret_value() == "0123456789abcdef"
    monkeypatch.delenv("LABELLOOP_API_TOKEN")
    assert load_settings(data_dir=tmp_path).api_token is None


def test_serve_refuses_an_empty_token_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "LABELLOOP_API_TOKEN": "", "LABELLOOP_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "labelloop", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "LABELLOOP_API_TOKEN is set but empty" in proc.stderr
    assert "Traceback" not in proc.stderr
