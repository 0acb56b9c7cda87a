"""Where Label Studio media is read from, and how its tokens are presented."""

from __future__ import annotations

from pathlib import Path

from labelloop.config import Settings
from labelloop.datastore import TaskFolder
from labelloop.labelstudio.links import (
    auth_header,
    is_jwt,
    project_url,
    rebase,
    relative,
    remember_project,
)
from tests.labelstudio.test_protocol import PAT, TOKEN


def test_links_below_the_setup_url_move_onto_the_operators_url(tmp_path: Path) -> None:
    cfg = Settings(data_dir=tmp_path / "data", labelstudio_url="http://ls:8080")
    folder = TaskFolder(cfg.resolved_data_dir, 1)
    assert project_url(folder) is None
    remember_project(folder, "http://localhost:8080/")
    assert project_url(folder) == "http://localhost:8080"
    sent = "http://localhost:8080/data/upload/1/a.png?x=1"
    assert rebase(sent, cfg, folder) == "http://ls:8080/data/upload/1/a.png?x=1"
    for other in ("http://elsewhere:8080/data/upload/1/a.png", "http://localhost:8080/api/tasks"):
        assert rebase(other, cfg, folder) == other
    # Without the setting, links keep the address they were sent with.
    plain = Settings(data_dir=tmp_path / "data")
    assert rebase(sent, plain, folder) == sent


def test_links_are_stored_relative() -> None:
    bases = ["http://ls:8080/sub", None]
    assert relative("http://ls:8080/sub/data/upload/1/a.png", bases) == "/data/upload/1/a.png"
    assert relative("/data/upload/1/a.png", bases) == "/data/upload/1/a.png"
    assert relative("http://ls:8080/data/upload/1/a.png", bases) == (
        "http://ls:8080/data/upload/1/a.png"  # not below the project's URL: kept as it is
    )


def test_legacy_tokens_go_as_they_are_and_access_tokens_only_when_asked(tmp_path: Path) -> None:
    cfg = Settings(data_dir=tmp_path / "data")
    assert not is_jwt(TOKEN) and is_jwt(PAT)
    assert auth_header("http://ls:8080", TOKEN, cfg) == {"Authorization": f"Token {TOKEN}"}
    # Checks before an item is stored make no request to exchange a personal access token.
    assert auth_header("http://ls:8080", PAT, cfg, exchange=False) == {}
