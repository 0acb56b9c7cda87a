from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labelloop.datastore import KEY, TaskFolder, confine
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


def vec(item_id: int, dim: int = 6) -> np.ndarray:
    """The row every writer stores for an item: a function of its id, so any mix-up shows."""
    return (np.arange(dim, dtype=np.float32) + item_id * 1000.0).astype(np.float32)


def h(item_id: int) -> str:
    return f"{item_id:064x}"


def test_feature_rows_round_trip(tmp_path: Path) -> None:
    folder = TaskFolder(tmp_path, 1)
    rows = folder.feature_rows("v1")
    assert rows.count() == 0 and rows.layout() is None
    assert not rows.get([1], [h(1)])[0].any()
    ids = [5, 2, 9]
    assert rows.append(ids, [h(i) for i in ids], np.stack([vec(i) for i in ids])) == 3
    assert rows.append(ids, [h(i) for i in ids], np.stack([vec(i) for i in ids])) == 0  # had them
    found, got = rows.get([9, 7, 2, 5], [h(9), h(7), h(2), h(999)])
    assert found.tolist() == [True, False, True, False]  # 7: never stored; 5: other content
    np.testing.assert_array_equal(got, np.stack([vec(9), vec(2)]))
    assert got.dtype == np.float32
    # Content that changed gets a row of its own; the id points at it from then on.
    assert rows.append([5], [h(999)], vec(999)[None]) == 1
    found, got = rows.get([5], [h(999)])
    assert found.all() and (got[0] == vec(999)).all()
    assert not folder.feature_rows("v2").get([9], [h(9)])[0].any()  # keyed by version too
    with pytest.raises(ValueError, match="shape"):
        rows.append([11], [h(11)], np.zeros((1, 3), dtype=np.float32))


def test_the_old_layout_is_still_read(tmp_path: Path) -> None:
    folder = TaskFolder(tmp_path, 1)
    assert not folder.has_old_features("v1")
    path = folder.feature_path("v1", "ab" * 32)
    path.parent.mkdir(parents=True)
    np.save(path, np.arange(5, dtype=np.float32))
    assert folder.has_old_features("v1") and not folder.has_old_features("v2")
    np.testing.assert_array_equal(folder.load_feature("v1", "ab" * 32), np.arange(5))
    assert folder.load_feature("v2", "ab" * 32) is None


def test_a_torn_tail_or_a_torn_row_reads_as_missing_and_is_written_over(tmp_path: Path) -> None:
    rows = TaskFolder(tmp_path, 1).feature_rows("v1")
    rows.append([1, 2], [h(1), h(2)], np.stack([vec(1), vec(2)]))
    # A writer killed mid-append: half a row and half a key after the whole ones.
    with open(rows.path / "rows.bin", "ab") as fh:
        fh.write(vec(3).tobytes()[:10])
    with open(rows.path / "keys.bin", "ab") as fh:
        fh.write(b"\x01" * (KEY.itemsize // 2))
    assert rows.count() == 2
    assert rows.get([1, 2], [h(1), h(2)])[0].all()
    rows.append([3], [h(3)], vec(3)[None])  # the next writer writes over the torn tail
    found, got = rows.get([1, 2, 3], [h(1), h(2), h(3)])
    assert found.all() and (got == np.stack([vec(1), vec(2), vec(3)])).all()
    # A power cut that kept the pointer but not the row's bytes: the checksum tells.
    with open(rows.path / "rows.bin", "r+b") as fh:
        fh.seek(vec(1).nbytes + 4)
        fh.write(b"\x00\x00\x00\x00")
    assert rows.get([1, 2, 3], [h(1), h(2), h(3)])[0].tolist() == [True, False, True]


N_WRITES = 120
SHARED = range(2001, 2041)


def _writer(root: str, parity: int, ready: Any, go: Any) -> None:
    """Appends the items of one parity, a few at a time, and every shared item."""
    rows = TaskFolder(Path(root), 1).feature_rows("v1")
    ready.set()
    go.wait(60)
    mine = [i for i in range(1, 2 * N_WRITES * 3 + 1) if i % 2 == parity]
    batches = [mine[j : j + 3] for j in range(0, len(mine), 3)]
    shared = list(SHARED)[::-1] if parity else list(SHARED)
    for n, batch in enumerate(batches):
        if n < len(shared) // 4:
            batch = batch + shared[4 * n : 4 * n + 4]
        rows.append(batch, [h(i) for i in batch], np.stack([vec(i) for i in batch]))


def _reader(root: str, ready: Any, go: Any, done: Any, bad: Any, seen: Any) -> None:
    """Reads while the writers write: every row it finds must be whole and the item's own."""
    rows = TaskFolder(Path(root), 1).feature_rows("v1")
    rng = np.random.default_rng(0)
    ready.set()
    go.wait(60)
    while not done.is_set():
        ids = [int(i) for i in rng.integers(1, 2 * N_WRITES * 3 + 1, 50)]
        found, got = rows.get(ids, [h(i) for i in ids])
        want = np.stack([vec(i) for i, f in zip(ids, found, strict=True) if f] or [vec(0)])
        if found.any() and not (got == want).all():
            bad.value += 1
        seen.value += int(found.sum())


def test_two_writer_processes_lose_and_corrupt_no_row_and_a_reader_sees_whole_rows(
    tmp_path: Path,
) -> None:
    ctx = mp.get_context("spawn")
    go, done = ctx.Event(), ctx.Event()
    ready = [ctx.Event() for _ in range(3)]
    bad, seen = ctx.Value("i", 0), ctx.Value("i", 0)
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), p, ready[p], go)) for p in (0, 1)]
    reader = ctx.Process(target=_reader, args=(str(tmp_path), ready[2], go, done, bad, seen))
    for proc in [*writers, reader]:
        proc.start()
    try:
        for event in ready:
            assert event.wait(120), "a process did not start"
        go.set()
        for proc in writers:
            proc.join(300)
            assert proc.exitcode == 0
    finally:
        done.set()
        reader.join(60)
        for proc in [*writers, reader]:
            if proc.is_alive():
                proc.kill()
    assert reader.exitcode == 0 and bad.value == 0
    ids = [*range(1, 2 * N_WRITES * 3 + 1), *SHARED]
    rows = TaskFolder(tmp_path, 1).feature_rows("v1")
    found, got = rows.get(ids, [h(i) for i in ids])
    assert found.all()
    np.testing.assert_array_equal(got, np.stack([vec(i) for i in ids]))
    assert rows.count() == len(ids)  # the shared items once each: a writer skips what it finds


def _bytes_read() -> int:
    """Bytes this process has read through system calls so far (``rchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_reading_a_few_rows_reads_those_rows_only(tmp_path: Path) -> None:
    dim = 1024  # 4 KB a row
    rows = TaskFolder(tmp_path, 1).feature_rows("v1")
    n = 2000
    for start in range(1, n + 1, 500):
        ids = list(range(start, start + 500))
        rows.append(ids, [h(i) for i in ids], np.stack([vec(i, dim) for i in ids]))
    size = (rows.path / "rows.bin").stat().st_size
    reader = TaskFolder(tmp_path, 1).feature_rows("v1")  # a process that has read nothing
    picked = [7, 500, 1093, 1940, 1941]
    before = _bytes_read()
    found, got = reader.get(picked, [h(i) for i in picked])
    read = _bytes_read() - before
    assert found.all() and (got[:, 1] == [vec(i, 2)[1] for i in picked]).all()
    # The rows, their keys and pointers, and the layout (a few hundred bytes): not the file.
    whole_rows = len(picked) * (dim * 4 + KEY.itemsize + 8)
    assert whole_rows <= read <= whole_rows + 4096 < size / 100


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
