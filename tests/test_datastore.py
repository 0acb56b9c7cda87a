from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelloop.datastore import TaskFolder, confine
from labelloop.errors import ForbiddenPath


def test_layout_is_the_seeds(tmp_path: Path) -> None:
    folder = TaskFolder(tmp_path, 3)
    folder.create()
    assert {p.name for p in folder.path.iterdir()} == {"Inference", "Preprocess", "Snapshot"}
    assert folder.version_dir(2) == tmp_path.resolve() / "task-3" / "Inference" / "model-time2"


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd"])
def test_confine_refuses_escapes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ForbiddenPath):
        confine(tmp_path, bad)


def test_confine_refuses_symlink_escape(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(ForbiddenPath):
        confine(tmp_path, "link", "passwd")


def test_version_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    folder = TaskFolder(tmp_path, 1)
    folder.create()
    with pytest.raises(RuntimeError), folder.writing_version(0) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed half-way")
    assert not folder.version_dir(0).exists()
    assert list(folder.inference.iterdir()) == []  # no temporary left behind

    with folder.writing_version(0) as tmp:
        (tmp / "model.bin").write_bytes(b"first")
    # A duplicate attempt of the same job never touches the folder already in place.
    with folder.writing_version(0) as tmp:
        (tmp / "model.bin").write_bytes(b"second")
    assert (folder.version_dir(0) / "model.bin").read_bytes() == b"first"
    assert [p.name for p in folder.inference.iterdir()] == ["model-time0"]


def test_feature_cache_round_trip(tmp_path: Path) -> None:
    folder = TaskFolder(tmp_path, 1)
    vec = np.arange(5, dtype=np.float32)
    assert folder.load_feature("v1", "ab" * 32) is None
    folder.store_feature("v1", "ab" * 32, vec)
    np.testing.assert_array_equal(folder.load_feature("v1", "ab" * 32), vec)
    assert folder.load_feature("v2", "ab" * 32) is None  # keyed by featurizer version too


@pytest.mark.parametrize(
    "bad",
    [
        "../task-4/Uploads/" + "a" * 64 + ".png",
        "/etc/passwd",
        "a" * 64 + ".svg",
        "a" * 64 + ".html",
        "A" * 64 + ".png",
        "a" * 63 + ".png",
        "a" * 64 + ".png/..",
        "a" * 64 + ".png\x00",
        "",
    ],
)
def test_upload_references_name_files_of_the_task_only(tmp_path: Path, bad: str) -> None:
    from labelloop.errors import InvalidInput

    folder = TaskFolder(tmp_path, 3)
    good = "a" * 64 + ".png"
    assert folder.upload_path(good) == tmp_path.resolve() / "task-3" / "Uploads" / good
    with pytest.raises(InvalidInput):
        folder.upload_path(bad)


def test_an_upload_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = TaskFolder(tmp_path, 3)
    folder.uploads.mkdir(parents=True)
    name = "c" * 64 + ".png"
    (folder.uploads / name).symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(ForbiddenPath):
        folder.upload_path(name)
