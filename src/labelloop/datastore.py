"""The per-task folder layout of the seed, with atomic writes and path confinement.

::

    <root>/task-<id>/Inference/model-time<N>/   one folder per trained version, written whole
    <root>/task-<id>/Preprocess/raw/            downloaded bytes, by content hash
    <root>/task-<id>/Preprocess/features/<featurizer version>/   feature rows (:class:`FeatureRows`)
    <root>/task-<id>/Snapshot/                  training checkpoints (warm starts, resumption)
    <root>/task-<id>/Uploads/<sha256>.<ext>     uploaded images, named by items as ``upload:<name>``

A version folder is built in a temporary sibling and renamed into place, so a reader sees a whole
model or none. No path is ever built from user input without passing :func:`confine`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
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

    def features_dir(self, featurizer_version: str) -> Path:
        return confine(self.preprocess, "features", featurizer_version)

    def feature_rows(self, featurizer_version: str) -> FeatureRows:
        """The rows of one featurizer version (``loop/features.py`` keeps one per process)."""
        return FeatureRows(self.features_dir(featurizer_version))

    def feature_path(self, featurizer_version: str, content_hash: str) -> Path:
        """The old layout: one ``.npy`` per content hash (read, never written any more)."""
        return confine(
            self.preprocess, "features", featurizer_version, content_hash[:2], f"{content_hash}.npy"
        )

    def has_old_features(self, featurizer_version: str) -> bool:
        """Whether features of the old layout are there to read (a datastore from before rows)."""
        try:
            entries = list(os.scandir(self.features_dir(featurizer_version)))
        except FileNotFoundError:
            return False
        return any(e.is_dir() and len(e.name) == 2 for e in entries)

    def load_feature(self, featurizer_version: str, content_hash: str) -> np.ndarray | None:
        """A feature of the old layout, or None."""
        path = self.feature_path(featurizer_version, content_hash)
        try:
            return np.load(path, allow_pickle=False)  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError, OSError):
            return None


# -- feature rows ----------------------------------------------------------------------------------

#: Per row in ``keys.bin``: the content hash it was computed from and a checksum of its bytes.
KEY = np.dtype([("hash", "V32"), ("sum", "<u8")])
#: Item ids above this are not kept in ``ids.bin`` (8 bytes an id: a sparse file).
MAX_ITEM_ID = 2**40
_MULTIPLIERS = np.random.default_rng(17).integers(1, 2**63, size=1 << 14, dtype=np.uint64) | 1


def hash_digest(content_hash: str) -> bytes:
    """The 32 bytes a content hash (sha256, hex) is kept as."""
    try:
        raw = bytes.fromhex(content_hash)
    except ValueError:
        raw = b""
    if len(raw) == 32:
        return raw
    import hashlib

    return hashlib.blake2b(content_hash.encode(), digest_size=32).digest()


def row_sums(rows: np.ndarray) -> np.ndarray:
    """A checksum per row (its 8-byte words times fixed odd numbers, summed, wrapping): tells a
    whole row from one a crash left half-written or zero, at numpy's speed."""
    if not len(rows):
        return np.zeros(0, dtype=np.uint64)
    flat = np.ascontiguousarray(rows).reshape(len(rows), -1).view(np.uint8)
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = np.hstack([flat, np.zeros((len(flat), pad), dtype=np.uint8)])
    words = flat.view("<u8")
    mult = np.resize(_MULTIPLIERS, words.shape[1])
    out = np.zeros(len(rows), dtype=np.uint64)
    for start in range(0, len(rows), 4096):  # bounded temporaries
        out[start : start + 4096] = (words[start : start + 4096] * mult).sum(
            axis=1, dtype=np.uint64
        )
    return out


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and machines sharing the folder, where ``flock`` is
    honoured), held while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class FeatureRows:
    """The features of one featurizer version of one task: fixed-size rows in one file.

    ::

        rows.json   the rows' dtype and shape (written once, by the first writer)
        rows.bin    the rows, back to back, only ever appended to
        keys.bin    per row: the content hash it was computed from and a checksum (:data:`KEY`)
        ids.bin     per item id: its row + 1 (int64 at offset 8 * id; 0: none) -- a sparse file
        rows.lock   writers append under this lock (``flock``)

    A writer, under the lock, writes its rows, then their keys, then points the items' ids at
    them; a reader finds a row through ``ids.bin`` only once it is whole, and checks the row's
    checksum and hash anyway (a crash or a power cut may leave a torn row behind the pointers: it
    reads as missing and is computed again). The number of rows is the number of whole keys, so a
    crash mid-write leaves the file readable and the next writer writes over the torn tail.

    Readers read the records they need with positioned reads (one ``pread`` per run of
    consecutive records): the features of N items cost O(N) bytes read, whatever the pool, and
    no memory beyond them. (A memory map costs the same reads but maps whole 2 MiB folios of the
    page cache into the reader: 300 rows of a 128 MB file showed as 153 MB of its RSS.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._layout: tuple[np.dtype, tuple[int, ...], tuple[int, int]] | None = None

    # -- reading

    def layout(self) -> tuple[np.dtype, tuple[int, ...]] | None:
        """The rows' dtype and shape (None before the first row)."""
        meta = self.path / "rows.json"
        try:
            st = meta.stat()
        except FileNotFoundError:
            return None
        if self._layout is None or self._layout[2] != (st.st_dev, st.st_ino):
            info = json.loads(meta.read_text())
            self._layout = (np.dtype(info["dtype"]), tuple(info["shape"]), (st.st_dev, st.st_ino))
        return self._layout[0], self._layout[1]

    def count(self) -> int:
        """Whole rows in the file."""
        try:
            return (self.path / "keys.bin").stat().st_size // KEY.itemsize
        except FileNotFoundError:
            return 0

    def _records(self, name: str, size: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Records ``index`` (in that order) of a file of ``size``-byte records, as rows of bytes,
        and whether each was whole in the file. One positioned read per run of consecutive
        records: a pool read in order is a few large reads, a sample one small read a record."""
        out = np.zeros((len(index), size), dtype=np.uint8)
        whole = np.zeros(len(index), dtype=bool)
        inside = np.flatnonzero(index >= 0)
        if not len(inside):
            return out, whole
        try:
            fd = os.open(self.path / name, os.O_RDONLY)
        except FileNotFoundError:
            return out, whole
        try:
            wanted, back = np.unique(index[inside], return_inverse=True)
            got = np.zeros((len(wanted), size), dtype=np.uint8)
            have = np.zeros(len(wanted), dtype=bool)
            starts = np.flatnonzero(np.diff(wanted, prepend=-2) != 1)
            for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(wanted)], strict=True):
                data = os.pread(fd, (b - a) * size, int(wanted[a]) * size)
                n = len(data) // size
                got[a : a + n] = np.frombuffer(data, dtype=np.uint8, count=n * size).reshape(
                    n, size
                )
                have[a : a + n] = True
        finally:
            os.close(fd)
        out[inside], whole[inside] = got[back], have[back]
        return out, whole

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Each id's row, or -1."""
        ids = np.asarray(ids, dtype=np.int64)
        raw, whole = self._records("ids.bin", 8, np.where(ids < MAX_ITEM_ID, ids, -1))
        pointers = raw.view("<i8").reshape(len(ids))
        return np.where(whole, pointers - 1, -1)

    def get(self, ids: Sequence[int], hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the items whose ``ids`` point at a whole row computed from content of
        these ``hashes``: (which of them were found, their rows in that order)."""
        return self._take(self._rows_of(np.asarray(ids, dtype=np.int64)), hashes)

    def _take(self, rows: np.ndarray, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``rows`` (-1: none) that are whole and of these content ``hashes``."""
        layout = self.layout()
        found = rows >= 0
        if not found.any() or layout is None:
            return np.zeros(len(rows), dtype=bool), np.zeros((0, 0))
        dtype, shape = layout
        width = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        at = rows[found]
        raw_keys, keys_whole = self._records("keys.bin", KEY.itemsize, at)
        raw_rows, rows_whole = self._records("rows.bin", width, at)
        keys = raw_keys.view(KEY).reshape(len(at))
        vectors = raw_rows.view(dtype).reshape(len(at), *shape)
        want = np.array(
            [hash_digest(hashes[i]) for i in np.flatnonzero(found).tolist()], dtype="V32"
        )
        ok = keys_whole & rows_whole & (keys["hash"] == want) & (keys["sum"] == row_sums(vectors))
        found[np.flatnonzero(found)[~ok]] = False
        return found, vectors[ok]

    def find(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows computed from these content ``hashes``, whichever item they were stored for
        (copies of a content; a feature folder copied from another task): (found, rows, their
        row numbers). Reads every key: O(pool), for callers that look up a share of it."""
        try:
            keys = np.fromfile(self.path / "keys.bin", dtype=KEY, count=self.count())
        except FileNotFoundError:
            keys = np.zeros(0, dtype=KEY)
        wanted = np.array(list({hash_digest(h) for h in hashes}), dtype="V32")
        where = {
            bytes(keys["hash"][r]): int(r) for r in np.flatnonzero(np.isin(keys["hash"], wanted))
        }
        rows = np.array([where.get(hash_digest(h), -1) for h in hashes], dtype=np.int64)
        found, vectors = self._take(rows, hashes)
        return found, vectors, rows[found]

    def range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop``, flattened to one vector each (one read)."""
        layout = self.layout()
        if layout is None or stop <= start:
            return np.zeros((0, 0), dtype=np.float32)
        dtype, shape = layout
        width = int(np.prod(shape, dtype=np.int64))
        raw, whole = self._records("rows.bin", dtype.itemsize * width, np.arange(start, stop))
        out: np.ndarray = raw[whole].view(dtype).reshape(-1, width)
        return out

    def link(self, ids: Sequence[int], rows: Sequence[int]) -> None:
        """Point items at rows already there (under the lock, as an append)."""
        with file_lock(self.path / "rows.lock"):
            for item_id, row in sorted(zip(ids, rows, strict=True)):
                if 0 < item_id < MAX_ITEM_ID:
                    self._write("ids.bin", int(item_id) * 8, np.int64(int(row) + 1).tobytes())

    # -- writing

    def append(self, ids: Sequence[int], hashes: Sequence[str], vectors: np.ndarray) -> int:
        """Add rows for these items (under the lock; items that got the same row meanwhile, from
        another writer, are skipped); the number of rows written."""
        vectors = np.asarray(vectors)
        if not len(ids):
            return 0
        if not all(0 < i < MAX_ITEM_ID for i in ids):
            raise ValueError("item ids out of range for a feature file")
        with file_lock(self.path / "rows.lock"):
            layout = self.layout()
            if layout is None:
                info = {"dtype": vectors.dtype.str, "shape": list(vectors.shape[1:]), "format": 1}
                write_bytes_atomic(self.path / "rows.json", json.dumps(info).encode())
                layout = self.layout()
                assert layout is not None
            dtype, shape = layout
            if tuple(vectors.shape[1:]) != shape:
                raise ValueError(f"rows of shape {vectors.shape[1:]} in a file of {shape}")
            found, _ = self.get(ids, hashes)
            keep = np.flatnonzero(~found).tolist()
            if not keep:
                return 0
            data = np.ascontiguousarray(vectors[keep], dtype=dtype)
            keys = np.zeros(len(keep), dtype=KEY)
            keys["hash"] = np.array([hash_digest(hashes[i]) for i in keep], dtype="V32")
            keys["sum"] = row_sums(data)
            start = self.count()
            pointers = {int(ids[i]): start + n + 1 for n, i in enumerate(keep)}
            self._write("rows.bin", start * data[0].nbytes, data.tobytes())
            self._write("keys.bin", start * KEY.itemsize, keys.tobytes())
            for item_id, row in sorted(pointers.items()):
                self._write("ids.bin", item_id * 8, np.int64(row).tobytes())
            return len(keep)

    def _write(self, name: str, offset: int, data: bytes) -> None:
        fd = os.open(self.path / name, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                done = os.pwrite(fd, view, offset)
                view, offset = view[done:], offset + done
        finally:
            os.close(fd)
