"""From items to learner inputs, through the task's feature cache (memory, then ``Preprocess/``).

An item's content is fetched at most once: its hash is recorded on the item, and features are
stored under that hash and the featurizer's version, so retraining reads them back instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.datastore import TaskFolder
from labelloop.errors import FetchError, LabelloopError
from labelloop.fetch import Content, read_link, text_content
from labelloop.kinds import media_of
from labelloop.learners.base import Features, Featurizer, Learner, View
from labelloop.loop.cache import FEATURES
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import ModelVersion

TRANSFORM_BATCH = 128


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


def featurize(
    rt: Runtime,
    task_id: int,
    category: str,
    learner: Learner | Sequence[Featurizer],
    items: Sequence[ItemRef],
) -> FeatureBatch:
    """Features of ``items`` for a learner (exactly the featurizers it is frozen with) or for a
    list of featurizers; items that fail are reported, the others go on."""
    featurizers = learner.featurizers() if isinstance(learner, Learner) else list(learner)
    folder = rt.folder(task_id)
    contents: dict[int, Content] = {}
    hashes: dict[int, str] = {it.id: it.content_hash for it in items if it.content_hash}
    failed: dict[int, str] = {}
    learned: dict[int, str] = {}

    def content_of(it: ItemRef) -> Content | None:
        if it.id in failed:
            return None
        if it.id not in contents:
            try:
                contents[it.id] = read_content(rt, category, it.data, task_id)
            except LabelloopError as exc:
                failed[it.id] = exc.message
                return None
            if hashes.get(it.id) != contents[it.id].content_hash:
                learned[it.id] = contents[it.id].content_hash
            hashes[it.id] = contents[it.id].content_hash
        return contents[it.id]

    per_view: dict[str, tuple[bool, dict[int, object]]] = {}
    for fz in featurizers:
        values: dict[int, object] = {}
        if fz.cacheable:
            table = FEATURES.table(task_id, fz.version)
            missing = _from_cache(folder, table, fz.version, items, hashes, values)
            todo = [(it, c) for it in missing if (c := content_of(it)) is not None]
            for it, c in todo:
                # Cached under the hash we just learned?
                vec = table.get(c.content_hash)
                if vec is None:
                    vec = folder.load_feature(fz.version, c.content_hash)
                if vec is not None:
                    table[c.content_hash] = vec
                    values[it.id] = vec
            todo = [(it, c) for it, c in todo if it.id not in values]
            for start in range(0, len(todo), TRANSFORM_BATCH):
                chunk = todo[start : start + TRANSFORM_BATCH]
                for (it, c), vec in zip(chunk, _transform(fz, chunk, failed), strict=True):
                    if vec is None:
                        continue
                    folder.store_feature(fz.version, c.content_hash, vec)
                    table[c.content_hash] = vec
                    values[it.id] = vec
        else:
            for it in items:
                c = content_of(it)
                if c is None:
                    continue
                try:
                    values[it.id] = fz.transform([c.raw])[0]
                except FetchError as exc:
                    failed[it.id] = exc.message
        per_view[fz.view] = (fz.cacheable, values)

    return _assemble(items, per_view, failed, learned)


def _from_cache(
    folder: TaskFolder,
    table: dict[str, np.ndarray],
    version: str,
    items: Sequence[ItemRef],
    hashes: dict[int, str],
    values: dict[int, object],
) -> list[ItemRef]:
    """Fill ``values`` with the features cached in memory or in ``Preprocess/`` (by content hash);
    returns the items that have none yet."""
    missing: list[ItemRef] = []
    for it in items:
        h = hashes.get(it.id)
        vec = table.get(h) if h else None
        if vec is None and h:
            vec = folder.load_feature(version, h)
            if vec is not None:
                table[h] = vec
        if vec is None:
            missing.append(it)
        else:
            values[it.id] = vec
    return missing


def _assemble(
    items: Sequence[ItemRef],
    per_view: dict[str, tuple[bool, dict[int, object]]],
    failed: dict[int, str],
    learned: dict[int, str],
) -> FeatureBatch:
    """One row per item that every featurizer could read, in the order of ``items``."""
    ok = [i for i, it in enumerate(items) if it.id not in failed]
    views: dict[str, View] = {}
    for view, (is_array, values) in per_view.items():
        rows = [values[items[i].id] for i in ok]
        if is_array:
            views[view] = np.vstack(rows) if rows else np.zeros((0, 0))  # type: ignore[arg-type]
        else:
            views[view] = [str(r) for r in rows]
    return FeatureBatch(Features(views), ok, failed, learned)


def featurize_contents(learner: Learner, contents: Sequence[Content]) -> Features:
    """Features of contents that are not stored items (the predict path); no caching. A served
    model reads exactly the featurizers recorded with it."""
    views: dict[str, View] = {}
    for fz in learner.featurizers():
        views[fz.view] = fz.transform([c.raw for c in contents])
    return Features(views)
