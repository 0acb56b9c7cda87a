"""Which model versions stay on disk: the served one, the newest ``LABELLOOP_KEEP_VERSIONS`` and
the best by cross-validated accuracy (by the task kind's promotion score: entity F1 for spans). The others are pruned after each training: their rows stay
(with their metrics, status ``pruned``), their folders go. A 300-label session trains ~32 versions
of up to 1.7 MB each at 100k items (issue 17); kept whole, that is the datastore's growth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.kinds import kind_for
from labelloop.runtime import Runtime
from labelloop.store.models import ModelVersion, Task

PRUNED = "pruned"


@dataclass(frozen=True)
class Version:
    version: int
    accuracy: float | None


def retained(versions: Sequence[Version], served: int | None, keep: int) -> set[int]:
    """The versions to keep among the ready ones: served, the newest ``keep``, the best."""
    newest = sorted((v.version for v in versions), reverse=True)[:keep]
    scored = [v for v in versions if v.accuracy is not None]
    best = max(scored, key=lambda v: (v.accuracy, v.version)).version if scored else None
    return {v for v in (served, best, *newest) if v is not None}


def mark_pruned(session: Session, task: Task, keep_versions: int) -> list[int]:
    """Mark the task's versions that :func:`retained` does not keep as pruned, in the caller's
    transaction (a training marks them in the one that records its version, so no reader sees
    the training over and a version listed ready that is about to go); returns them."""
    rows = list(
        session.scalars(
            select(ModelVersion).where(
                ModelVersion.task_id == task.id, ModelVersion.status == "ready"
            )
        )
    )
    key = kind_for(task.category, task.extra).promotion_key
    versions = [Version(r.version, (r.metrics or {}).get(key)) for r in rows]
    keep = retained(versions, task.served_version, keep_versions)
    pruned = [r for r in rows if r.version not in keep]
    for r in pruned:
        r.status = PRUNED
    return sorted(r.version for r in pruned)


def prune_versions(rt: Runtime, task_id: int) -> list[int]:
    """Prune what :func:`mark_pruned` does not keep and remove the folders of every pruned
    version still on disk (those marked by a training's own transaction too); returns the
    versions this call marked."""
    with rt.session() as s:
        task = s.get(Task, task_id)
        if task is None:
            return []
        marked = mark_pruned(s, task, rt.settings.keep_versions)
        gone = list(
            s.scalars(
                select(ModelVersion.version).where(
                    ModelVersion.task_id == task_id, ModelVersion.status == PRUNED
                )
            )
        )
    folder = rt.folder(task_id)
    for version in gone:
        if folder.version_dir(version).exists():
            folder.remove_version(version)
    return marked
