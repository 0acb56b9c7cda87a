"""The training job: idempotent, resumable from its checkpoint, promotes at most once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelloop.config import Settings
from labelloop.datastore import FeatureRows
from labelloop.learners import backbones
from labelloop.loop import training
from labelloop.loop.executor import execute
from labelloop.loop.prediction import predict_stored
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.service.items import ItemIn, add_items
from labelloop.service.labelling import AnnotationIn, submit
from labelloop.service.tasks import TaskCreate, create_task
from labelloop.store.models import Job, ModelVersion, Task

TEXTS = {
    "sport": [
        "the match ended with a late goal",
        "the team won the league",
        "a striker scored twice",
    ],
    "food": ["bake the bread in the oven", "a recipe for tomato soup", "the chef cooked pasta"],
}


class Killed(BaseException):
    """Stands for the worker process dying: nothing after it runs, not even except blocks."""


def setup(rt: Runtime) -> int:
    t = int(
        create_task(
            rt,
            TaskCreate(
                name="t",
                category="text-classification",
                labels=["sport", "food"],
                policy={"min_labels": 6, "learner_params": {"embeddings": False}},
            ),
        )["id"]
    )  # type: ignore[arg-type]
    added = add_items(
        rt,
        t,
        [
            ItemIn(data=text, external_id=f"{label}{i}")
            for label, texts in TEXTS.items()
            for i, text in enumerate(texts)
        ],
    )
    submit(
        rt,
        t,
        [
            AnnotationIn(
                external_id=it["external_id"], labels=[it["external_id"].rstrip("0123456789")]
            )
            for it in added["items"]
        ],
    )
    return t


def train_job(rt: Runtime, t: int) -> int:
    with rt.session() as s:
        job = s.query(Job).filter(Job.task_id == t, Job.kind == "train").one()
        return job.id


def test_a_rerun_resumes_from_the_checkpoint_and_promotes_once(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = setup(rt)
    job_id = train_job(rt, t)
    real_finish = training._finish

    def die(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise Killed

    monkeypatch.setattr(training, "_finish", die)
    with pytest.raises(Killed):
        execute(rt, job_id)
    folder = rt.folder(t)
    assert folder.checkpoint_dir(f"job-{job_id}").is_dir()
    with rt.session() as s:
        assert s.get(Job, job_id).state == "running"  # type: ignore[union-attr]
        assert s.get(Task, t).served_version is None  # type: ignore[union-attr]

    monkeypatch.setattr(training, "_finish", real_finish)
    execute(rt, job_id)  # the redelivered job
    with rt.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == "done" and job.attempts == 2
        versions = s.query(ModelVersion).filter(ModelVersion.task_id == t).all()
        assert [v.version for v in versions] == [0]
        assert versions[0].metrics["resumed_from_checkpoint"] is True
        assert s.get(Task, t).served_version == 0  # type: ignore[union-attr]
    assert not folder.checkpoint_dir(f"job-{job_id}").exists()

    # A third delivery of the same job changes nothing.
    execute(rt, job_id)
    with rt.session() as s:
        assert s.query(ModelVersion).filter(ModelVersion.task_id == t).count() == 1
        assert s.get(Task, t).promotions == 1  # type: ignore[union-attr]


def test_a_photo_task_records_the_chosen_learner_and_its_frozen_features(
    tmp_path: Path, settings: Settings, image_root: Path
) -> None:
    """The loop chooses among pixels and the backbone's learners by cross-validation, says why in
    the version's metrics, and the version predicts with exactly the featurizers it recorded."""
    from tests.learners.conftest import build_tiny
    from tests.learners.test_photos import colour_squares

    ts, _ = build_tiny(tmp_path / "backbone")
    spec = {"kind": "torchscript", "path": str(ts), "input_size": 32}
    rt = Runtime(
        settings.model_copy(update={"image_backbone": json.dumps(spec)}), migrate_schema=True
    )
    try:
        raws, labels = colour_squares(30)
        for i, raw in enumerate(raws):
            (image_root / f"sq-{i}.png").write_bytes(raw)
        t = int(
            create_task(
                rt,
                TaskCreate(
                    name="colours",
                    category="image-classification",
                    labels=["red", "green"],
                    policy={"min_labels": 24, "cv_folds": 3},
                ),
            )["id"]  # type: ignore[arg-type]
        )
        added = add_items(
            rt,
            t,
            [ItemIn(data=str(image_root / f"sq-{i}.png"), external_id=str(i)) for i in range(30)],
        )
        submit(
            rt,
            t,
            [
                AnnotationIn(external_id=it["external_id"], labels=[labels[int(it["external_id"])]])
                for it in added["items"][:24]
            ],
        )
        execute(rt, train_job(rt, t))
        with rt.session() as s:
            mv = s.query(ModelVersion).filter(ModelVersion.task_id == t).one()
            assert mv.learner.startswith("embedding-"), mv.metrics
            choice = mv.metrics["learner_choice"]
            assert set(choice["candidates"]) == {"pool-svm", "embedding-logreg", "embedding-spread"}
            assert mv.learner in choice["reason"]
            assert mv.metrics["learner"] == mv.learner
        meta = json.loads(
            (rt.folder(t).version_dir(mv.version) / "model" / "learner.json").read_text()
        )
        assert meta["learner"] == mv.learner
        [record] = meta["featurizers"]
        assert record["name"] == "backbone" and record["config"]["path"] == str(ts.resolve())
        assert record["config"]["input_size"] == 32 and record["config"]["sha256"]
        # A server setting that changes later does not change what this version reads.
        backbones.configure(settings.model_copy(update={"image_backbone": "none"}))
        rest = [it["id"] for it in added["items"][24:]]
        with rt.session() as s:
            spec = TaskSpec.of(s.get(Task, t))  # type: ignore[arg-type]
        rows = predict_stored(rt, spec, mv.version, rest).rows
        assert [r["labels"] for r in rows] == [[labels[24 + i]] for i in range(6)]
    finally:
        rt.close()


def test_fine_tuning_is_scored_on_one_fold_and_never_featurizes_the_pool_when_it_loses(
    settings: Settings, image_root: Path
) -> None:
    from tests.learners.test_photos import halves

    torch_threads = settings.model_copy(
        update={"image_backbone": '{"input_size": 32}', "torch_threads": 1}
    )
    rt = Runtime(torch_threads, migrate_schema=True)
    try:
        raws, labels = halves(40)
        for i, raw in enumerate(raws):
            (image_root / f"sq-{i}.png").write_bytes(raw)
        policy = {
            "min_labels": 30,
            "cv_folds": 3,
            "learner_params": {"candidates": ["pool-svm", "finetune"], "finetune_min_labels": 30},
        }
        t = int(
            create_task(
                rt,
                TaskCreate(
                    name="colours",
                    category="image-classification",
                    labels=["left", "right"],
                    policy=policy,
                ),
            )["id"]  # type: ignore[arg-type]
        )
        added = add_items(
            rt,
            t,
            [ItemIn(data=str(image_root / f"sq-{i}.png"), external_id=str(i)) for i in range(40)],
        )
        submit(
            rt,
            t,
            [
                AnnotationIn(external_id=it["external_id"], labels=[labels[int(it["external_id"])]])
                for it in added["items"][:30]
            ],
        )
        execute(rt, train_job(rt, t))
        with rt.session() as s:
            mv = s.query(ModelVersion).filter(ModelVersion.task_id == t).one()
            evidence = mv.metrics["learner_choice"]["candidates"]
            served = s.get(Task, t).served_version  # type: ignore[union-attr]
        assert set(evidence) == {"pool-svm", "finetune"}
        assert evidence["pool-svm"]["evaluation"] == "k-fold"
        assert "pool-svm" in evidence["finetune"]["against"]
        maps = rt.folder(t).preprocess / "features"
        n_maps = sum(FeatureRows(d).count() for d in maps.glob("maps-*"))
        # Bright halves, which grey pixels tell apart perfectly: fine-tuning cannot beat pixels
        # on the first fold, so it was fitted once, and only the labelled items went through the
        # backbone for it.
        assert mv.learner == "pool-svm"
        assert evidence["finetune"]["evaluation"] == "one fold"
        assert evidence["finetune"]["scored_on"] == 10
        assert n_maps == 30
        assert served == mv.version
        with rt.session() as s:
            spec = TaskSpec.of(s.get(Task, t))  # type: ignore[arg-type]
        rest = [it["id"] for it in added["items"][30:]]
        assert len(predict_stored(rt, spec, mv.version, rest).rows) == 10
        assert mv.metrics["costly_evaluated_at"] == 30

        # Ten more labels: fine-tuning competes again only once the labels have doubled.
        submit(
            rt,
            t,
            [
                AnnotationIn(
                    external_id=it["external_id"],
                    labels=[labels[int(it["external_id"])]],
                    shown_none=True,
                )
                for it in added["items"][30:]
            ],
        )
        with rt.session() as s:
            job = (
                s.query(Job)
                .filter(Job.task_id == t, Job.kind == "train", Job.state == "queued")
                .one()
            )
        execute(rt, job.id)
        with rt.session() as s:
            second = s.query(ModelVersion).filter(ModelVersion.task_id == t).all()[-1]
            assert second.version == 1
            assert set(second.metrics["learner_choice"]["candidates"]) == {"pool-svm"}
            assert second.metrics["costly_evaluated_at"] == 30
    finally:
        rt.close()


def run_featurize_jobs(rt: Runtime, t: int) -> None:
    with rt.session() as s:
        queued = [
            j.id
            for j in s.query(Job).filter(
                Job.task_id == t, Job.kind == "featurize", Job.state == "queued"
            )
        ]
    for job_id in queued:
        execute(rt, job_id)


@pytest.mark.parametrize("pixels_win", [True, False])
def test_the_pool_is_embedded_only_once_a_backbone_learner_wins(
    tmp_path: Path,
    settings: Settings,
    image_root: Path,
    pixels_win: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``auto`` competes the backbone's learners on the labelled items' embeddings; the pool (and
    each item added later) goes through the backbone only once one of them won. A task where
    pixels win (digits) never embeds its unlabelled items."""
    from labelloop.learners.embedding import EmbeddingFeaturizer
    from labelloop.loop.cache import FEATURES
    from tests.learners.conftest import build_tiny
    from tests.learners.test_photos import colour_squares, halves

    through_backbone = [0]
    transform = EmbeddingFeaturizer.transform

    def counting(self: EmbeddingFeaturizer, raws: list[bytes]) -> object:
        through_backbone[0] += len(raws)
        return transform(self, raws)

    monkeypatch.setattr(EmbeddingFeaturizer, "transform", counting)

    ts, _ = build_tiny(tmp_path / "backbone")
    spec = {"kind": "torchscript", "path": str(ts), "input_size": 32}
    rt = Runtime(
        settings.model_copy(update={"image_backbone": json.dumps(spec)}), migrate_schema=True
    )
    try:
        raws, labels = (halves if pixels_win else colour_squares)(45)
        for i, raw in enumerate(raws):
            (image_root / f"im-{i}.png").write_bytes(raw)
        names = sorted(set(labels))
        t = int(
            create_task(
                rt,
                TaskCreate(
                    name="t",
                    category="image-classification",
                    labels=names,
                    policy={"min_labels": 24, "cv_folds": 3},
                ),
            )["id"]  # type: ignore[arg-type]
        )
        FEATURES.drop_task(t)  # an earlier test's task of the same id, in this process

        def add(first: int, last: int) -> list[dict[str, object]]:
            added = add_items(
                rt,
                t,
                [
                    ItemIn(data=str(image_root / f"im-{i}.png"), external_id=str(i))
                    for i in range(first, last)
                ],
            )
            run_featurize_jobs(rt, t)
            return added["items"]  # type: ignore[no-any-return]

        embeddings = rt.folder(t).preprocess / "features"

        def embedded() -> int:
            stored = sum(FeatureRows(d).count() for d in embeddings.glob("embed-*"))
            assert stored == through_backbone[0]  # each item through the backbone once
            return stored

        items = add(0, 40)
        assert embedded() == 0  # the featurize jobs computed pixels only
        submit(
            rt,
            t,
            [
                AnnotationIn(external_id=str(it["external_id"]), labels=[labels[int(str(i))]])
                for i, it in zip(range(24), items, strict=False)
            ],
        )
        execute(rt, train_job(rt, t))
        with rt.session() as s:
            mv = s.query(ModelVersion).filter(ModelVersion.task_id == t).one()
            evidence = mv.metrics["learner_choice"]["candidates"]
        assert {"pool-svm", "embedding-logreg", "embedding-spread"} <= set(evidence)
        assert all(e["scored_on"] == 24 for e in evidence.values())
        if pixels_win:
            assert mv.learner == "pool-svm"
            assert embedded() == 24  # the labelled items only
        else:
            assert mv.learner.startswith("embedding-")
            assert embedded() == 40  # the whole pool, once the backbone won
        add(40, 45)  # new items: embedded on arrival only where a backbone learner is current
        assert embedded() == (24 if pixels_win else 45)
        with rt.session() as s:
            task_spec = TaskSpec.of(s.get(Task, t))  # type: ignore[arg-type]
        rows = predict_stored(rt, task_spec, mv.version, [int(str(it["id"])) for it in items])
        assert len(rows.rows) == 40
    finally:
        rt.close()
