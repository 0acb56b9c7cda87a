"""Submitting labels: validated, appended (never overwritten), measured against the pre-label shown."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.errors import InvalidInput, LabelloopError, NotFound
from labelloop.loop.labels import LabelSnapshot
from labelloop.loop.scheduling import lock_task, request_training
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.schemas import AnnotationCreate
from labelloop.service import reservations
from labelloop.service.common import enqueue, get_task_row
from labelloop.store.models import Annotation, Item, Job, ModelVersion, Prediction

#: One item's labels; the shape (and its checks) is :class:`labelloop.schemas.AnnotationCreate`.
AnnotationIn = AnnotationCreate


@dataclass
class _Shown:
    """What a submission reads before the write lock: the stored pre-labels of the items and the
    task's trained versions (to check and record the pre-label each item showed)."""

    stored: dict[int, Prediction]
    versions: set[int]


def _read_shown(s: Session, spec: TaskSpec, wanted: dict[int, int]) -> _Shown:
    if not wanted:
        return _Shown({}, set())
    stored = {
        p.item_id: p
        for p in s.scalars(select(Prediction).where(Prediction.item_id.in_(list(wanted))))
    }
    versions = set(
        s.scalars(
            select(ModelVersion.version).where(
                ModelVersion.task_id == spec.id, ModelVersion.status == "ready"
            )
        )
    )
    return _Shown(stored, versions)


def _shown(
    rt: Runtime, spec: TaskSpec, wanted: dict[int, int], read: _Shown
) -> dict[int, list[str] | None]:
    """The pre-label each item showed: item id -> labels of ``wanted[item]`` version (scored
    here, outside any transaction, when the stored one is another version's)."""
    out: dict[int, list[str] | None] = {}
    todo: dict[int, list[int]] = defaultdict(list)
    for item_id, version in wanted.items():
        p = read.stored.get(item_id)
        if p is not None and p.version == version:
            out[item_id] = list(p.labels)
        elif version not in read.versions:
            raise InvalidInput(f"shown_version {version} is not a trained version of this task")
        else:
            todo[version].append(item_id)
    for version, ids in todo.items():
        try:
            got = rt.jobs.predict_items(spec, version, ids)
        except LabelloopError:
            got = None
        if got is not None:
            for row in got.rows:
                out[int(row["item_id"])] = list(row["labels"])  # type: ignore[call-overload]
    return out


def resolved_ids(
    annotations: list[AnnotationIn], owned: set[int], by_ext: dict[str | None, int]
) -> list[int]:
    """The known item ids the annotations name (unknown ones are refused later, in order)."""
    out = [a.item_id for a in annotations if a.item_id is not None and a.item_id in owned]
    return out + [by_ext[a.external_id] for a in annotations if a.external_id in by_ext]


def _texts(s: Session, item_ids: list[int]) -> dict[int, str]:
    """Item id -> its text, for kinds whose values point into it."""
    rows = s.execute(select(Item.id, Item.data).where(Item.id.in_(item_ids))).all()
    return {int(i): str(d) for i, d in rows}


def submit(
    rt: Runtime, task_id: int, annotations: list[AnnotationIn], annotator: str | None = None
) -> dict[str, Any]:
    """Append annotations (all or none) and let the policy decide whether to train.

    ``annotator`` (the name an annotator's token carries) replaces whatever the annotations say.
    Labelling an item releases the labeller's reservation of it.
    """
    if annotator is not None:
        annotations = [a.model_copy(update={"annotator": annotator}) for a in annotations]
    if not annotations:
        raise InvalidInput("no annotations")
    if len(annotations) > rt.settings.max_items_per_request:
        raise InvalidInput(f"at most {rt.settings.max_items_per_request} annotations per request")
    # Everything that only reads is read first, from a snapshot beside any writer: the write
    # transaction below inserts the rows, releases reservations and decides on a training.
    with rt.reading() as s:
        spec, resolved, values = _checked(s, task_id, annotations)
        shown_version: dict[int, int | None] = {}
        for item_id, a in zip(resolved, annotations, strict=True):
            if a.shown_none:
                shown_version[item_id] = None
            elif a.shown_version is not None:
                shown_version[item_id] = a.shown_version
            else:
                shown_version[item_id] = spec.served_version
        wanted = {i: v for i, v in shown_version.items() if v is not None}
        read = _read_shown(s, spec, wanted)
        snapshot = LabelSnapshot.of(s, get_task_row(s, task_id))
    shown = _shown(rt, spec, wanted, read)

    jobs: list[Job] = []
    with rt.session() as s:
        task = lock_task(s, task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        rows = []
        for item_id, a, value in zip(resolved, annotations, values, strict=True):
            version = shown_version[item_id]
            shown_labels = shown.get(item_id) if version is not None else None
            if version is not None and shown_labels is None:
                version = None  # that version could not answer for this item: nothing was shown
            row = Annotation(
                task_id=task_id,
                item_id=item_id,
                labels=value,
                source="human",
                annotator=a.annotator,
                shown_version=version,
                shown_labels=shown_labels,
                edited=None if value is None else not spec.kind.same(value, shown_labels),
            )
            rows.append(row)
        s.add_all(rows)
        s.flush()
        labelled: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            if r.annotator is not None:
                labelled[r.annotator].append(r.item_id)
        reservations.release(s, task_id, labelled)
        job = request_training(s, task, snapshot=snapshot)
        if job is not None:
            jobs.append(job)
        out = _submitted(rows, jobs, task.train_pending)
    enqueue(rt, jobs)
    return out


def _checked(
    s: Session, task_id: int, annotations: list[AnnotationIn]
) -> tuple[TaskSpec, list[int], list[list[Any] | None]]:
    """The task, the item each annotation is for, and its value as stored: checked by the task's
    kind before anything is written (the first problem raises, naming the annotation)."""
    spec = TaskSpec.of(get_task_row(s, task_id))
    by_ext: dict[str | None, int] = {}
    ext = [a.external_id for a in annotations if a.external_id is not None]
    if ext:
        by_ext = dict(
            s.execute(
                select(Item.external_id, Item.id).where(
                    Item.task_id == task_id, Item.external_id.in_(ext)
                )
            ).all()
        )
    ids = [a.item_id for a in annotations if a.item_id is not None]
    owned = set(s.scalars(select(Item.id).where(Item.task_id == task_id, Item.id.in_(ids))))
    kind = spec.kind
    texts = _texts(s, resolved_ids(annotations, owned, by_ext)) if kind.needs_text else {}
    resolved: list[int] = []
    values: list[list[Any] | None] = []
    for n, a in enumerate(annotations):
        where = f"annotation {n}"
        if a.item_id is not None:
            if a.item_id not in owned:
                raise NotFound(f"{where}: task {task_id} has no item {a.item_id}")
            resolved.append(a.item_id)
        else:
            assert a.external_id is not None
            if a.external_id not in by_ext:
                raise NotFound(
                    f'{where}: task {task_id} has no item with external_id "{a.external_id}"'
                )
            resolved.append(by_ext[a.external_id])
        try:
            value = a.value(kind.value_field)
        except ValueError as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        kind.validate(value, spec.labels, where, texts.get(resolved[-1]))
        values.append(None if value is None else kind.normalize(value))
    return spec, resolved, values


def _submitted(rows: list[Annotation], jobs: list[Job], pending: bool) -> dict[str, Any]:
    """The answer to a submission: each annotation's revision and whether it was edited."""
    return {
        "annotations": [
            {
                "revision": r.id,
                "item_id": r.item_id,
                "edited": r.edited,
                "shown_version": r.shown_version,
            }
            for r in rows
        ],
        "revision": rows[-1].id,
        "training_triggered": bool(jobs),
        "training_job": jobs[0].id if jobs else None,
        "training_pending": pending,
    }
