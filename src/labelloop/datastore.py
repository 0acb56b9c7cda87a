"""The per-task folder layout of the seed, with atomic writes and path confinement.

::

    <root>/task-<id>/Inference/model-time<N>/   one folder per trained version, written whole
    <root>/task-<id>/Preprocess/raw/            downloaded bytes, by content hash
    <root>/task-<id>/Preprocess/features/<featurizer version>/   features, by content hash
    <root>/task-<id>/Snapshot/                  training checkpoints (warm starts, resumption)
    <root>/task-<id>/Uploads/<sha256>.<ext>     uploaded images, named by items as ``upload:<name>``

A version folder is built in a temporary sibling and renamed into place, so a reader sees a whole
model or none. No path is ever built from user input without passing :func:`confine`.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np

from labelloop.errors import ForbiddenPath, InvalidInput

#: The name of an uploaded file: its content hash and the suffix of its image format.
UPLOAD_NAME = re.compile(r"[0-9a-f]{64}\.(?:png|jpg|gif|bmp|webp|tif)")


def confine(base: Path, *parts: str) -> Path:
    """``base / parts`` resolved, refused if it would leave ``base`` (``..``, absolute parts, links)."""
    base = base.resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base):
        raise ForbiddenPath(f"path escapes its root: {'/'.join(parts)!r}")
    return target


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def write_bytes_atomic(
    path: Path, data: bytes, durable: bool = True, mode: int | None = None
) -> None:
    """Write a file whole or not at all (temporary file, rename).

    ``durable`` also flushes it to disk first; caches skip that, since a cache entry lost in a
    power cut is simply computed again. ``mode`` is set before any byte is written, so a secret
    is never readable by others, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if mode is None:
            fh = open(tmp, "xb")  # noqa: SIM115 - closed by the with below
        else:
            fh = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb")
            os.fchmod(fh.fileno(), mode)  # whatever the umask
        with fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def write_dir(target: Path) -> Iterator[Path]:
    """A folder written whole or not at all: built in a temporary sibling, renamed into place.

    If ``target`` already exists, an earlier attempt of the same work wrote it whole (training is
    deterministic), so the new copy is discarded and the existing one is left untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        try:
            os.rename(tmp, target)
        except OSError:
            # A concurrent duplicate renamed its (identical) copy first.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class TaskFolder:
    """The folders of one task."""

    def __init__(self, root: Path, task_id: int) -> None:
        if task_id <= 0:
            raise InvalidInput(f"bad task id {task_id}")
        self.root = root
        self.path = confine(root, f"task-{int(task_id)}")

    @property
    def inference(self) -> Path:
        return self.path / "Inference"

    @property
    def preprocess(self) -> Path:
        return self.path / "Preprocess"

    @property
    def snapshot(self) -> Path:
        return self.path / "Snapshot"

    @property
    def uploads(self) -> Path:
        return self.path / "Uploads"

    def upload_path(self, name: str) -> Path:
        """The file of an upload reference (``upload:<name>``), only ever in this task's folder."""
        if not UPLOAD_NAME.fullmatch(name):
            raise InvalidInput(f"not an upload reference: {name!r}")
        return confine(self.uploads, name)

    def create(self) -> None:
        for folder in (self.inference, self.preprocess, self.snapshot):
            folder.mkdir(parents=True, exist_ok=True)

    def delete(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def version_dir(self, version: int) -> Path:
        return self.inference / f"model-time{int(version)}"

    def remove_version(self, version: int) -> None:
        """Delete a pruned version's folder (renamed aside first, so no reader sees half of it)."""
        folder = self.version_dir(version)
        if not folder.exists():
            return
        aside = folder.parent / f".pruned-{folder.name}-{uuid.uuid4().hex}"
        try:
            os.rename(folder, aside)
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def writing_version(self, version: int) -> AbstractContextManager[Path]:
        """A temporary folder that becomes ``model-time<version>`` whole, in one rename."""
        return write_dir(self.version_dir(version))

    def checkpoint_dir(self, name: str) -> Path:
        """``Snapshot/<name>.ckpt/``: what a training job fitted, so that a rerun resumes from it."""
        return confine(self.snapshot, f"{name}.ckpt")

    def writing_checkpoint(self, name: str) -> AbstractContextManager[Path]:
        return write_dir(self.checkpoint_dir(name))

    def raw_path(self, content_hash: str) -> Path:
        return confine(self.preprocess, "raw", content_hash[:2], content_hash)

    def feature_path(self, featurizer_version: str, content_hash: str) -> Path:
        return confine(
            self.preprocess, "features", featurizer_version, content_hash[:2], f"{content_hash}.npy"
        )

    def load_feature(self, featurizer_version: str, content_hash: str) -> np.ndarray | None:
        path = self.feature_path(featurizer_version, content_hash)
        try:
            return np.load(path, allow_pickle=False)  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError, OSError):
            return None

    def store_feature(self, featurizer_version: str, content_hash: str, vector: np.ndarray) -> None:
        import io

        buf = io.BytesIO()
        np.save(buf, vector, allow_pickle=False)
        path = self.feature_path(featurizer_version, content_hash)
        write_bytes_atomic(path, buf.getvalue(), durable=False)
