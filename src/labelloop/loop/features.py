"""From items to learner inputs, through the task's feature rows in ``Preprocess/``.

An item's content is fetched at most once: its hash is recorded on the item, and its features are
stored as one row of the featurizer version's file (:class:`~labelloop.datastore.FeatureRows`),
found by item id and checked against that hash, so retraining reads them back instead. Reading
N items' rows reads O(N) bytes, whatever the pool, and no process keeps features of its own.
Datastores of the old layout (one ``.npy`` per content hash) are read too, and what is read from
them is appended as rows. Views that are not worth storing (``cacheable = False``: the words
TF-IDF is fitted on, spaCy's raw text, static token embeddings) are computed again from the
item's own text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.datastore import FeatureRows, TaskFolder
from labelloop.errors import FetchError, LabelloopError
from labelloop.fetch import Content, read_link, text_content
from labelloop.kinds import media_of
from labelloop.learners import neighbours
from labelloop.learners.base import Features, Featurizer, Learner, View
from labelloop.loop.cache import FEATURES
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import ModelVersion

log = logging.getLogger(__name__)

TRANSFORM_BATCH = 128
#: Items read, fetched and featurized at a time: what one call holds of their contents.
CHUNK = 2048
#: Items without a row of their own look for one of the same content (another item's, or a
#: feature folder copied from another task) when they are at least 1/FIND_SHARE of the rows: the
#: search reads every key, so it is only done when that is in proportion to the call's own work.
FIND_SHARE = 8


def is_text(category: str) -> bool:
    """Items of this category are texts (else data links); the task's kind says."""
    return media_of(category) == "text"


@dataclass(frozen=True)
class ItemRef:
    """What featurizing needs to know of an item (no ORM object crosses process boundaries)."""

    id: int
    data: str
    content_hash: str | None = None


@dataclass
class FeatureBatch:
    features: Features
    #: Positions (in the request) of the items that have features, in the order of ``features``.
    ok: list[int] = field(default_factory=list)
    #: Item id -> reason, for items that could not be read or decoded.
    failed: dict[int, str] = field(default_factory=dict)
    #: Item id -> content hash, for items whose hash was learned here.
    hashes: dict[int, str] = field(default_factory=dict)


def current_learner(session: Session, task_id: int) -> str | None:
    """The learner of the task's newest ready version (None before the first)."""
    return session.scalar(
        select(ModelVersion.learner)
        .where(ModelVersion.task_id == task_id, ModelVersion.status == "ready")
        .order_by(ModelVersion.version.desc())
        .limit(1)
    )


def pool_featurizers(session: Session, spec: TaskSpec) -> list[Featurizer]:
    """What every item of a task is featurized with as it arrives (the featurize job): its
    learner's featurizers; for ``auto``, the backbone's embeddings only once a backbone learner
    won (:meth:`~labelloop.learners.auto.AutoImage.pool_featurizers`)."""
    return spec.new_learner().pool_featurizers(current_learner(session, spec.id))


def read_content(rt: Runtime, category: str, data: str, task_id: int) -> Content:
    if is_text(category):
        return text_content(data)
    return read_link(data, rt.settings, rt.folder(task_id))


def _transform(
    fz: Featurizer, chunk: list[tuple[ItemRef, Content]], failed: dict[int, str]
) -> list[np.ndarray | None]:
    """A batch through the featurizer at once (embeddings need batches); item by item only when
    the batch holds an item that cannot be decoded, so that one bad item fails alone."""
    try:
        out = fz.transform([c.raw for _, c in chunk])
        return [np.asarray(row) for row in out]
    except FetchError:
        pass
    rows: list[np.ndarray | None] = []
    for it, c in chunk:
        try:
            rows.append(np.asarray(fz.transform([c.raw])[0]))
        except FetchError as exc:
            failed[it.id] = exc.message
            rows.append(None)
    return rows


def _transform_rows(
    fz: Featurizer, chunk: list[tuple[ItemRef, Content]], failed: dict[int, str]
) -> list[Any]:
    """A batch through a featurizer whose view is not stored: its rows as they come (texts or
    vectors); item by item only when one item cannot be decoded, so that it fails alone."""
    if not chunk:
        return []
    try:
        return list(fz.transform([c.raw for _, c in chunk]))
    except FetchError:
        pass
    rows: list[Any] = []
    for it, c in chunk:
        try:
            rows.append(fz.transform([c.raw])[0])
        except FetchError as exc:
            failed[it.id] = exc.message
            rows.append(None)
    return rows


def featurize(
    rt: Runtime,
    task_id: int,
    category: str,
    learner: Learner | Sequence[Featurizer],
    items: Sequence[ItemRef],
) -> FeatureBatch:
    """Features of ``items`` for a learner (exactly the featurizers it is frozen with) or for a
    list of featurizers; items that fail are reported, the others go on.

    Stored rows are read (O(len(items)) bytes, whatever the pool); the others are computed,
    appended and, once the pool is past the exact-index size, added to the task's shared
    neighbour index. Items go through :data:`CHUNK` at a time, so their fetched contents are held
    a chunk at a time.
    """
    featurizers = learner.featurizers() if isinstance(learner, Learner) else list(learner)
    run = _Run(rt, task_id, category, items)
    for start in range(0, len(items), CHUNK):
        run.chunk(featurizers, start, items[start : start + CHUNK])
    for fz in featurizers:
        if run.appended.get(fz.version):
            _index_arrivals(run.folder, fz.version, run.rows(fz.version))
    return run.assemble(featurizers)


def feature_rows(rt: Runtime, task_id: int, version: str) -> FeatureRows:
    """The task's rows of one featurizer version, opened once per process."""
    return FEATURES.rows(task_id, version, lambda: rt.folder(task_id).feature_rows(version))


class _Run:
    """One call of :func:`featurize`: what it has read, computed and learned so far."""

    def __init__(self, rt: Runtime, task_id: int, category: str, items: Sequence[ItemRef]) -> None:
        self.rt, self.task_id, self.category, self.items = rt, task_id, category, items
        self.folder = rt.folder(task_id)
        self.hashes: dict[int, str] = {it.id: it.content_hash for it in items if it.content_hash}
        self.failed: dict[int, str] = {}
        self.learned: dict[int, str] = {}
        #: Array views: (positions in ``items``, their rows), as read or computed.
        self.arrays: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        #: Text views: position in ``items`` -> text.
        self.texts: dict[str, dict[int, str]] = {}
        #: Rows appended, by featurizer version.
        self.appended: dict[str, int] = {}
        self._old: dict[str, bool] = {}

    def rows(self, version: str) -> FeatureRows:
        return feature_rows(self.rt, self.task_id, version)

    def chunk(self, featurizers: list[Featurizer], start: int, chunk: Sequence[ItemRef]) -> None:
        contents: dict[int, Content] = {}

        def content_of(it: ItemRef) -> Content | None:
            if it.id in self.failed:
                return None
            if it.id not in contents:
                try:
                    c = read_content(self.rt, self.category, it.data, self.task_id)
                except LabelloopError as exc:
                    self.failed[it.id] = exc.message
                    return None
                contents[it.id] = c
                if self.hashes.get(it.id) != c.content_hash:
                    self.learned[it.id] = c.content_hash
                self.hashes[it.id] = c.content_hash
            return contents[it.id]

        for fz in featurizers:
            if fz.cacheable:
                self._stored(fz, start, chunk, content_of)
                continue
            # Texts, and vectors that cost microseconds (static embeddings): computed for the
            # chunk at once from the item's own text, never stored.
            readable = [(i, c) for i, it in enumerate(chunk) if (c := content_of(it)) is not None]
            done = [
                (i, row)
                for (i, _), row in zip(
                    readable,
                    _transform_rows(fz, [(chunk[i], c) for i, c in readable], self.failed),
                    strict=True,
                )
                if row is not None
            ]
            if done and isinstance(done[0][1], str):
                texts = self.texts.setdefault(fz.view, {})
                texts.update((start + i, str(row)) for i, row in done)
            elif done:
                at = np.asarray([i for i, _ in done], dtype=np.int64) + start
                self.arrays.setdefault(fz.view, []).append((at, np.stack([r for _, r in done])))

    def _stored(
        self,
        fz: Featurizer,
        start: int,
        chunk: Sequence[ItemRef],
        content_of: Callable[[ItemRef], Content | None],
    ) -> None:
        """The chunk's rows of one featurizer: read where stored under the item's content hash,
        else from the old layout, else computed; those not read from the rows are appended."""
        rows = self.rows(fz.version)
        got = self.arrays.setdefault(fz.view, [])
        known = [i for i, it in enumerate(chunk) if it.id in self.hashes]
        unknown = [i for i, it in enumerate(chunk) if it.id not in self.hashes]
        missing = self._read(rows, start, chunk, known, got) + unknown
        # Content is fetched for the rest only; its hash may be new to the item: look again.
        fetched = [i for i in sorted(missing) if content_of(chunk[i]) is not None]
        todo = self._read(rows, start, chunk, fetched, got)
        if todo and len(todo) * FIND_SHARE >= rows.count():
            todo = self._find(rows, start, chunk, todo, got)
        new: dict[int, np.ndarray] = {}
        if todo and self._has_old(fz.version):
            for i in todo:
                vec = self.folder.load_feature(fz.version, self.hashes[chunk[i].id])
                if vec is not None:
                    new[i] = vec
        # Computed once per content in the chunk: copies share it.
        first: dict[str, int] = {}
        for i in todo:
            if i not in new:
                first.setdefault(self.hashes[chunk[i].id], i)
        compute = list(first.values())
        for b in range(0, len(compute), TRANSFORM_BATCH):
            batch = [
                (i, c) for i in compute[b : b + TRANSFORM_BATCH] if (c := content_of(chunk[i]))
            ]
            pairs = [(chunk[i], c) for i, c in batch]
            for (i, _), vec in zip(batch, _transform(fz, pairs, self.failed), strict=True):
                if vec is not None:
                    new[i] = vec
        for i in todo:  # copies of a computed content share its row, or its failure
            it = chunk[i]
            twin = first.get(self.hashes[it.id])
            if i in new or it.id in self.failed or twin is None:
                continue
            if twin in new:
                new[i] = new[twin]
            elif chunk[twin].id in self.failed:
                self.failed[it.id] = self.failed[chunk[twin].id]
        if not new:
            return
        order = sorted(new)
        vectors = np.stack([np.asarray(new[i]) for i in order])
        got.append((np.asarray(order, dtype=np.int64) + start, vectors))
        try:
            n = rows.append(
                [chunk[i].id for i in order], [self.hashes[chunk[i].id] for i in order], vectors
            )
        except ValueError as exc:  # rows of another shape under the same version: not stored
            log.warning("features of %s not stored: %s", fz.version, exc)
            return
        self.appended[fz.version] = self.appended.get(fz.version, 0) + n

    def _read(
        self,
        rows: FeatureRows,
        start: int,
        chunk: Sequence[ItemRef],
        which: list[int],
        got: list[tuple[np.ndarray, np.ndarray]],
    ) -> list[int]:
        """Rows of ``chunk[which]`` stored under their hashes go to ``got``; returns the others."""
        if not which:
            return []
        found, vectors = rows.get(
            [chunk[i].id for i in which], [self.hashes[chunk[i].id] for i in which]
        )
        at = np.asarray(which, dtype=np.int64)
        if found.any():
            got.append((at[found] + start, vectors))
        return [int(i) for i in at[~found]]

    def _find(
        self,
        rows: FeatureRows,
        start: int,
        chunk: Sequence[ItemRef],
        which: list[int],
        got: list[tuple[np.ndarray, np.ndarray]],
    ) -> list[int]:
        """Rows of the same content stored for other items (copies; a copied feature folder):
        these items are pointed at them. Returns the items still without a row."""
        found, vectors, at_rows = rows.find([self.hashes[chunk[i].id] for i in which])
        at = np.asarray(which, dtype=np.int64)
        if found.any():
            got.append((at[found] + start, vectors))
            rows.link([chunk[int(i)].id for i in at[found]], at_rows.tolist())
        return [int(i) for i in at[~found]]

    def _has_old(self, version: str) -> bool:
        if version not in self._old:
            self._old[version] = self.folder.has_old_features(version)
        return self._old[version]

    def assemble(self, featurizers: list[Featurizer]) -> FeatureBatch:
        """One row per item that every featurizer could read, in the order of ``items``."""
        ok = [i for i, it in enumerate(self.items) if it.id not in self.failed]
        slot = np.full(len(self.items), -1, dtype=np.int64)
        slot[ok] = np.arange(len(ok))
        views: dict[str, View] = {}
        for fz in featurizers:
            if fz.view in self.texts or (not fz.cacheable and fz.view not in self.arrays):
                texts = self.texts.get(fz.view, {})  # (none at all: no item could be read)
                views[fz.view] = [str(texts[i]) for i in ok]
                continue
            parts = self.arrays.get(fz.view, [])
            if not ok or not parts:
                views[fz.view] = np.zeros((0, 0))
                continue
            dtype = np.result_type(*(rows.dtype for _, rows in parts))
            out = np.empty((len(ok), *parts[0][1].shape[1:]), dtype=dtype)
            filled = np.zeros(len(ok), dtype=bool)
            for pos, rows in parts:
                keep = slot[pos] >= 0
                out[slot[pos[keep]]] = rows[keep]
                filled[slot[pos[keep]]] = True
            if not filled.all():  # every item is read, computed or failed: never left out
                raise RuntimeError(f"{int((~filled).sum())} items got no {fz.view!r} features")
            views[fz.view] = out
        return FeatureBatch(Features(views), ok, self.failed, self.learned)


def _index_arrivals(folder: TaskFolder, version: str, rows: FeatureRows) -> None:
    """New rows join the task's shared neighbour index (``learners/neighbours.py``), so that a
    training finds it built. Best effort: the rows are stored whatever happens here, and a
    training adds the rows the index lacks."""
    layout = rows.layout()
    if layout is None or len(layout[1]) != 1:
        return
    try:
        neighbours.index_arrivals(folder.preprocess / "neighbours", version, rows)
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("the neighbour index of %s was not grown: %s", version, exc)


def featurize_contents(learner: Learner, contents: Sequence[Content]) -> Features:
    """Features of contents that are not stored items (the predict path); no caching. A served
    model reads exactly the featurizers recorded with it."""
    views: dict[str, View] = {}
    for fz in learner.featurizers():
        views[fz.view] = fz.transform([c.raw for c in contents])
    return Features(views)
