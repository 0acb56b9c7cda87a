"""Features through the task's rows: computed once, read back by id and content hash (the old
``.npy`` layout too), a bad item fails alone, and the shared neighbour index grows as rows
arrive."""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from labelloop.datastore import TaskFolder
from labelloop.errors import FetchError
from labelloop.fetch import content_hash
from labelloop.learners import neighbours
from labelloop.learners.base import Featurizer
from labelloop.loop import features
from labelloop.loop.cache import FEATURES
from labelloop.loop.features import ItemRef, feature_rows, featurize

CATEGORY = "text-classification"
DIM = 8


def embed(text: str) -> np.ndarray:
    """A vector that depends on the text only, clustered by its first letter."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    centre = np.random.default_rng(ord(text[0])).normal(size=DIM) * 4
    return (centre + rng.normal(size=DIM)).astype(np.float32)


class Counting(Featurizer):
    """Vectors of texts, counting what went through it; texts starting with "bad" fail."""

    view = "vec"

    def __init__(self) -> None:
        self.seen: list[str] = []

    @property
    def version(self) -> str:
        return "counting-v1"

    def transform(self, raws: Sequence[bytes]) -> np.ndarray:
        texts = [r.decode() for r in raws]
        if any(t.startswith("bad") for t in texts):
            raise FetchError("cannot read it")
        self.seen += texts
        return np.stack([embed(t) for t in texts]) if texts else np.zeros((0, DIM))


class Words(Featurizer):
    view = "words"
    cacheable = False

    @property
    def version(self) -> str:
        return "words-v1"

    def transform(self, raws: Sequence[bytes]) -> list[str]:
        return [r.decode() for r in raws]


class Rt:
    """What featurizing texts reads of a runtime: the task's folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, task_id: int) -> TaskFolder:
        return TaskFolder(self.root, task_id)


def refs(texts: list[str], first_id: int = 1, hashed: bool = True) -> list[ItemRef]:
    return [
        ItemRef(first_id + i, t, content_hash(t.encode()) if hashed else None)
        for i, t in enumerate(texts)
    ]


def texts(n: int, start: int = 0) -> list[str]:
    return [f"{'abcdefgh'[i % 8]} item {i}" for i in range(start, start + n)]


def test_rows_are_computed_once_and_read_back(tmp_path: Path) -> None:
    rt, fz = Rt(tmp_path), Counting()
    items = refs(texts(300), hashed=False)
    batch = featurize(rt, 1, CATEGORY, [fz, Words()], items)  # type: ignore[arg-type]
    assert batch.ok == list(range(300)) and len(fz.seen) == 300
    assert batch.hashes == {it.id: content_hash(it.data.encode()) for it in items}
    want = np.stack([embed(t.data) for t in items])
    np.testing.assert_array_equal(batch.features.array("vec"), want)
    assert batch.features.texts("words") == [t.data for t in items]
    # Another process (nothing open) reads a subset back, in the order asked, computing nothing.
    FEATURES.clear()
    again = Counting()
    subset = [items[i] for i in (250, 3, 77)]
    hashed = [ItemRef(it.id, it.data, batch.hashes[it.id]) for it in subset]
    got = featurize(rt, 1, CATEGORY, [again], hashed)  # type: ignore[arg-type]
    assert again.seen == [] and got.hashes == {}
    np.testing.assert_array_equal(got.features.array("vec"), want[[250, 3, 77]])
    assert feature_rows(rt, 1, fz.version).count() == 300  # type: ignore[arg-type]


def test_changed_content_copies_and_bad_items(tmp_path: Path) -> None:
    rt, fz = Rt(tmp_path), Counting()
    items = refs(["a one", "bad two", "a one", "b three", "bad two"])
    batch = featurize(rt, 1, CATEGORY, [fz], items)  # type: ignore[arg-type]
    assert batch.ok == [0, 2, 3] and set(batch.failed) == {2, 5}  # a bad copy fails as well
    assert fz.seen == ["a one", "b three"]  # the copy was computed once
    np.testing.assert_array_equal(batch.features.array("vec")[1], embed("a one"))
    # Item 4 is read again (no hash on record) and its content changed (a data link that now
    # answers other bytes): its row does not stand for the new content, which is computed.
    changed = [ItemRef(4, "c four", None)]
    got = featurize(rt, 1, CATEGORY, [fz], changed)  # type: ignore[arg-type]
    assert fz.seen[-1] == "c four" and got.hashes == {4: content_hash(b"c four")}
    np.testing.assert_array_equal(got.features.array("vec")[0], embed("c four"))


def test_a_datastore_of_the_old_layout_is_read_and_moved_to_rows(tmp_path: Path) -> None:
    rt, fz = Rt(tmp_path), Counting()
    folder = TaskFolder(tmp_path, 1)
    items = refs(texts(20))
    for it in items[:15]:  # what an older labelloop wrote: one .npy per content hash
        assert it.content_hash is not None
        path = folder.feature_path(fz.version, it.content_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, embed(it.data))
    batch = featurize(rt, 1, CATEGORY, [fz], items)  # type: ignore[arg-type]
    assert fz.seen == [it.data for it in items[15:]]
    np.testing.assert_array_equal(
        batch.features.array("vec"), np.stack([embed(it.data) for it in items])
    )
    assert feature_rows(rt, 1, fz.version).count() == 20  # type: ignore[arg-type]


def test_the_shared_index_grows_as_rows_arrive_and_a_training_builds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(neighbours, "EXACT_BELOW", 400)
    monkeypatch.setattr(neighbours, "ARRIVALS_MIN", 60)
    monkeypatch.setattr(neighbours, "_SHARED", {})
    monkeypatch.setattr(features, "CHUNK", 128)  # several chunks per call
    rt, fz = Rt(tmp_path), Counting()
    home = TaskFolder(tmp_path, 1).preprocess / "neighbours"
    index = home / f"hnsw-{DIM}d.faiss"

    def ntotal() -> int:
        return int(neighbours.GrowingIndex.read(index, DIM).index.ntotal)

    featurize(rt, 1, CATEGORY, [fz], refs(texts(300)))  # type: ignore[arg-type]
    assert not index.exists()  # small pools are searched exactly: no index
    featurize(rt, 1, CATEGORY, [fz], refs(texts(150, 300), 301))  # type: ignore[arg-type]
    assert ntotal() == 450  # past the exact size: built from every row
    featurize(rt, 1, CATEGORY, [fz], refs(texts(30, 450), 451))  # type: ignore[arg-type]
    assert ntotal() == 450  # a few rows wait in the feature file
    featurize(rt, 1, CATEGORY, [fz], refs(texts(40, 480), 481))  # type: ignore[arg-type]
    assert ntotal() == 520  # enough waited: they joined in one write
    # A training of the whole pool finds every row there: it adds nothing, writes nothing.
    stamp = index.stat().st_mtime_ns
    pool = featurize(rt, 1, CATEGORY, [fz], refs(texts(520)))  # type: ignore[arg-type]
    X = pool.features.array("vec")
    with neighbours.kept_in(home):
        found = neighbours.neighbours(X, 5)
    assert index.stat().st_mtime_ns == stamp
    assert DIM not in neighbours._GROWING
    truth = NearestNeighbors(n_neighbors=6).fit(X).kneighbors(X, return_distance=False)[:, 1:]
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist(), strict=True))
    assert hits / truth.size > 0.9


def test_a_feature_folder_copied_from_another_task_is_read_by_content(tmp_path: Path) -> None:
    """What ``bench/photos.py --features-from`` does: another task's items (other ids) of the
    same contents find their rows, and are pointed at them instead of computed or copied."""
    rt, fz = Rt(tmp_path), Counting()
    first = refs(texts(40))
    featurize(rt, 1, CATEGORY, [fz], first)  # type: ignore[arg-type]
    shutil.copytree(
        TaskFolder(tmp_path, 1).preprocess / "features",
        TaskFolder(tmp_path, 2).preprocess / "features",
    )
    second = refs(texts(45), first_id=1001)  # the same 40 texts and 5 new ones
    seen = len(fz.seen)
    batch = featurize(rt, 2, CATEGORY, [fz], second)  # type: ignore[arg-type]
    assert fz.seen[seen:] == [it.data for it in second[40:]]
    np.testing.assert_array_equal(
        batch.features.array("vec"), np.stack([embed(it.data) for it in second])
    )
    rows = feature_rows(rt, 2, fz.version)  # type: ignore[arg-type]
    assert rows.count() == 45  # 40 rows pointed at, 5 appended
    hashes = [content_hash(it.data.encode()) for it in (second[0], second[43])]
    assert rows.get([1001, 1044], hashes)[0].all()
