"""Retention: the served version, the newest N and the best stay; the rest are pruned."""

from __future__ import annotations

from sqlalchemy import select

from labelloop.loop.retention import PRUNED, Version, mark_pruned, prune_versions, retained
from labelloop.runtime import Runtime
from labelloop.schemas import TaskCreate
from labelloop.service import tasks
from labelloop.store.models import ModelVersion, Task


def test_retained_keeps_served_newest_and_best() -> None:
    vs = [Version(v, acc) for v, acc in enumerate([0.5, 0.9, 0.6, 0.7, None, 0.65, 0.7])]
    assert retained(vs, served=2, keep=2) == {2, 5, 6, 1}
    assert retained(vs, served=None, keep=0) == {1}
    assert retained(vs, served=6, keep=10) == set(range(7))
    # Best ties: the newer one.
    assert retained([Version(0, 0.8), Version(1, 0.8), Version(2, 0.1)], 2, 0) == {1, 2}


def test_pruning_removes_folders_and_marks_rows(rt: Runtime) -> None:
    t = tasks.create_task(
        rt, TaskCreate(name="r", category="text-classification", labels=["a", "b"])
    )
    t_id = t["id"]
    folder = rt.folder(t_id)
    accuracy = [0.5, 0.9, 0.6, 0.7, 0.65, 0.7]
    with rt.session() as s:
        for v, acc in enumerate(accuracy):
            s.add(
                ModelVersion(
                    task_id=t_id,
                    version=v,
                    job_key=f"j{v}",
                    learner="x",
                    status="ready",
                    label_revision=v,
                    metrics={"cv_accuracy": acc},
                )
            )
            with folder.writing_version(v) as tmp:
                (tmp / "metrics.json").write_text("{}")
        s.add(
            ModelVersion(
                task_id=t_id,
                version=6,
                job_key="j6",
                learner="x",
                status="failed",
                label_revision=6,
                metrics={},
            )
        )
        s.get_one(Task, t_id).served_version = 2
    rt.settings.keep_versions = 2
    assert prune_versions(rt, t_id) == [0, 3]
    with rt.session() as s:
        status = dict(s.execute(select(ModelVersion.version, ModelVersion.status)).all())
    assert status == {
        0: PRUNED,
        1: "ready",
        2: "ready",
        3: PRUNED,
        4: "ready",
        5: "ready",
        6: "failed",
    }
    on_disk = sorted(int(p.name.removeprefix("model-time")) for p in folder.inference.iterdir())
    assert on_disk == [1, 2, 4, 5]
    assert prune_versions(rt, t_id) == []  # nothing more to prune


def test_versions_marked_in_a_training_transaction_lose_their_folders_after(rt: Runtime) -> None:
    """A training marks what it prunes in the transaction that records its version (a reader
    never sees the training over with a doomed version listed ready); the folders go after."""
    t_id = tasks.create_task(
        rt, TaskCreate(name="m", category="text-classification", labels=["a", "b"])
    )["id"]
    folder = rt.folder(t_id)
    with rt.session() as s:
        for v in range(4):
            s.add(
                ModelVersion(
                    task_id=t_id,
                    version=v,
                    job_key=f"m{v}",
                    learner="x",
                    status="ready",
                    label_revision=v,
                    metrics={"cv_accuracy": 0.5 + v / 10},
                )
            )
            with folder.writing_version(v) as tmp:
                (tmp / "metrics.json").write_text("{}")
        s.flush()
        task = s.get_one(Task, t_id)
        task.served_version = 3
        assert mark_pruned(s, task, keep_versions=1) == [0, 1, 2]
    with rt.session() as s:
        ready = s.scalars(select(ModelVersion.version).where(ModelVersion.status == "ready"))
        assert sorted(ready) == [3]
    assert folder.version_dir(0).exists()  # marked, not yet removed
    assert prune_versions(rt, t_id) == []  # nothing new to mark...
    on_disk = sorted(int(p.name.removeprefix("model-time")) for p in folder.inference.iterdir())
    assert on_disk == [3]  # ...but the marked versions' folders are gone
