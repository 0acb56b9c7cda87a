"""A large task: a training reads the labelled items and a bounded sample of the pool; after a
promotion the pool is re-predicted by background chunk jobs, most uncertain first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import insert, select

from labelloop.loop import autolabel, prediction, training
from labelloop.loop.executor import execute
from labelloop.loop.features import ItemRef
from labelloop.loop.labels import current_labels
from labelloop.loop.ranking import set_covered
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.service.labelling import AnnotationIn, submit
from labelloop.service.models import promote
from labelloop.service.tasks import TaskCreate, create_task
from labelloop.store.models import Annotation, Item, Job, ModelVersion, Prediction, Task
from labelloop.store.upsert import upsert_predictions

N_ITEMS = 160
SAMPLE = 30
CHUNK = 25
WORDS = {
    "sport": ["match", "goal", "team", "league", "striker"],
    "food": ["bread", "oven", "soup", "chef", "pasta"],
}


class Killed(BaseException):
    """Stands for the worker process dying: nothing after it runs, not even except blocks."""


def text(i: int) -> tuple[str, str]:
    label = "sport" if i % 2 else "food"
    words = WORDS[label]
    return label, f"{words[i % 5]} {words[(i // 5) % 5]} item {i}"


def make_task(rt: Runtime, auto_label: dict[str, Any] | None = None) -> tuple[int, list[int]]:
    """A text task whose served version 0 (not on disk) ranked every item; 12 human labels and a
    training job for them. Returns the task and its item ids."""
    policy: dict[str, Any] = {"min_labels": 6, "learner_params": {"embeddings": False}}
    if auto_label is not None:
        policy["auto_label"] = auto_label
    t = int(
        create_task(
            rt,
            TaskCreate(
                name="large",
                category="text-classification",
                labels=["sport", "food"],
                policy=policy,
            ),
        )["id"]  # type: ignore[arg-type]
    )
    with rt.session() as s:
        s.execute(
            insert(Item),
            [{"task_id": t, "data": text(i)[1], "status": "ready"} for i in range(N_ITEMS)],
        )
        ids = list(s.scalars(select(Item.id).where(Item.task_id == t).order_by(Item.id)))
        s.add(
            ModelVersion(
                task_id=t,
                version=0,
                job_key=f"old{t}",
                learner="tfidf-svm",
                status="ready",
                label_revision=0,
                metrics={},
            )
        )
        s.get_one(Task, t).served_version = 0
        upsert_predictions(
            s,
            [
                {
                    "item_id": i,
                    "task_id": t,
                    "version": 0,
                    "labels": ["sport"],
                    "scores": [0.6, 0.4],
                    "score": 0.6,
                    "uncertainty": (i * 7919 % 1000) / 1000,
                }
                for i in ids
            ],
        )
    submit(
        rt,
        t,
        [AnnotationIn(item_id=i, labels=[text(k)[0]]) for k, i in enumerate(ids[:12])],
    )
    return t, ids


@pytest.fixture
def small(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setattr(rt.settings, "train_pool_sample", SAMPLE)
    monkeypatch.setattr(rt.settings, "rescore_chunk", CHUNK)
    return rt


def train_job(rt: Runtime, t: int) -> int:
    with rt.session() as s:
        return s.scalars(select(Job.id).where(Job.task_id == t, Job.kind == "train")).one()


def jobs_of(rt: Runtime, ids: Sequence[int]) -> list[Job]:
    with rt.session() as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(list(ids))))}
        s.expunge_all()
    return [jobs[i] for i in ids]


def predicted(rt: Runtime, t: int, version: int) -> dict[int, Prediction]:
    with rt.session() as s:
        rows = {
            p.item_id: p
            for p in s.scalars(
                select(Prediction).where(Prediction.task_id == t, Prediction.version == version)
            )
        }
        s.expunge_all()
    return rows


def test_a_training_reads_the_labels_and_a_bounded_sample_of_the_pool(
    small: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = small
    t, ids = make_task(rt)
    read: list[set[int]] = []
    real = training.featurize

    def counted(rt_: Runtime, task_id: int, category: str, learner: Any, items: Any) -> Any:
        read.append({it.id for it in items})
        return real(rt_, task_id, category, learner, items)

    monkeypatch.setattr(training, "featurize", counted)
    written: list[int] = []
    real_upsert = training.upsert_predictions

    def upsert(s: Any, rows: Any) -> None:
        written.append(len(rows))
        real_upsert(s, rows)

    monkeypatch.setattr(training, "upsert_predictions", upsert)
    monkeypatch.setattr(training, "WRITE_CHUNK", 7)
    follow = execute(rt, train_job(rt, t))
    labelled = set(ids[:12])
    items = set().union(*read)
    assert labelled <= items
    assert len(items - labelled) == SAMPLE  # never more pool items than the sample
    with rt.session() as s:
        mv = s.scalars(
            select(ModelVersion)
            .where(ModelVersion.task_id == t)
            .order_by(ModelVersion.version.desc())
        ).first()
        assert mv is not None and mv.promoted
        assert mv.metrics["n_pool"] == N_ITEMS and mv.metrics["n_read"] == len(items)
        # The sample is the head of the task's stable random order: a rerun reads the same.
        first = list(
            s.scalars(
                select(Item.id)
                .where(Item.task_id == t, Item.id.not_in(labelled))
                .order_by(Item.lottery)
                .limit(SAMPLE)
            )
        )
        assert items - labelled == set(first)
        again, n_pool, sampled = training.read_pool(s, t, labelled, SAMPLE)
        assert {r.id for r in again} == items and n_pool == N_ITEMS and sampled
    # The version serves at once with the sample's pre-labels; the rest is left to the
    # background (one rescore job among the follow-ups).
    assert len(predicted(rt, t, mv.version)) == SAMPLE
    assert written == [7, 7, 7, 7, 2]  # a transaction per chunk: the write lock held briefly
    assert [j.kind for j in jobs_of(rt, follow)].count("rescore") == 1


def test_chunk_jobs_rescore_the_whole_pool_most_uncertain_first(small: Runtime) -> None:
    rt = small
    t, ids = make_task(rt)
    follow = execute(rt, train_job(rt, t))
    (rescore,) = [j.id for j in jobs_of(rt, follow) if j.kind == "rescore"]
    with rt.session() as s:
        version = s.get_one(Task, t).served_version
        old = {
            p.item_id: p.uncertainty
            for p in s.scalars(select(Prediction).where(Prediction.version == 0))
        }
    assert version == 1
    chunks = execute(rt, rescore)
    planned = [i for j in jobs_of(rt, chunks) for i in j.payload["item_ids"]]
    assert len(chunks) == -(-len(planned) // CHUNK)
    # Every item the new version has not scored and nobody labelled, once, the previous
    # version's most uncertain first.
    done_by_training = set(predicted(rt, t, 1))
    assert sorted(planned) == sorted(set(ids[12:]) - done_by_training)
    assert [old[i] for i in planned] == sorted((old[i] for i in planned), reverse=True)
    assert execute(rt, rescore) == []  # a second delivery plans nothing more
    for job_id in chunks:
        execute(rt, job_id)
    assert set(predicted(rt, t, 1)) == set(ids[12:])
    # A finished chunk keeps how many items it took, not their ids.
    assert sum(j.payload["items"] for j in jobs_of(rt, chunks)) == len(planned)
    assert not any("item_ids" in j.payload for j in jobs_of(rt, chunks))


def test_a_newer_promotion_stops_older_chunks(small: Runtime) -> None:
    rt = small
    t, _ = make_task(rt)
    follow = execute(rt, train_job(rt, t))
    (rescore,) = [j.id for j in jobs_of(rt, follow) if j.kind == "rescore"]
    first, *rest = execute(rt, rescore)
    execute(rt, first)
    before = set(predicted(rt, t, 1))
    with rt.session() as s:  # another version is served now (a rollback, a newer training)
        s.get_one(Task, t).served_version = 0
    for job_id in rest:
        execute(rt, job_id)
    assert set(predicted(rt, t, 1)) == before
    assert all(j.result == {"skipped": "superseded"} for j in jobs_of(rt, rest))


def test_a_killed_chunk_job_reruns_to_the_same_result(
    small: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = small
    t, _ = make_task(rt)
    follow = execute(rt, train_job(rt, t))
    (rescore,) = [j.id for j in jobs_of(rt, follow) if j.kind == "rescore"]
    chunk = execute(rt, rescore)[0]
    (job,) = jobs_of(rt, [chunk])
    item_ids = job.payload["item_ids"]

    def die(*args: Any, **kwargs: Any) -> None:
        raise Killed

    monkeypatch.setattr(prediction, "upsert_predictions", die)
    with pytest.raises(Killed):
        execute(rt, chunk)
    assert not set(item_ids) & set(predicted(rt, t, 1))
    monkeypatch.undo()
    execute(rt, chunk)  # the redelivered job
    (job,) = jobs_of(rt, [chunk])
    assert job.state == "done" and job.attempts == 2
    stored = predicted(rt, t, 1)
    with rt.session() as s:
        spec = TaskSpec.of(s.get_one(Task, t))
        refs = [
            ItemRef(i.id, i.data, i.content_hash)
            for i in s.scalars(select(Item).where(Item.id.in_(item_ids)))
        ]
    scored = prediction.score_items(rt, spec, 1, refs)
    expect = prediction.prediction_rows(spec, 1, [refs[k].id for k in scored.ok], scored.scores, {})
    assert {r["item_id"]: (r["labels"], r["score"]) for r in expect} == {
        i: (stored[i].labels, pytest.approx(stored[i].score)) for i in item_ids
    }


THRESHOLD = 0.95


def model_labels(rt: Runtime, t: int) -> dict[int, Annotation]:
    """Item id -> its current model label (retracted ones dropped)."""
    with rt.session() as s:
        rows = s.scalars(
            select(Annotation)
            .where(Annotation.task_id == t, Annotation.source == "model")
            .order_by(Annotation.id)
        )
        out: dict[int, Annotation] = {}
        for a in rows:
            if a.labels is None:
                out.pop(a.item_id, None)
            else:
                out[a.item_id] = a
        s.expunge_all()
    return out


def n_annotations(rt: Runtime, t: int) -> int:
    with rt.session() as s:
        return len(list(s.scalars(select(Annotation.id).where(Annotation.task_id == t))))


@pytest.fixture
def certified(small: Runtime, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """Every training certifies :data:`THRESHOLD` (the estimate itself is tested elsewhere)."""

    def estimate(*args: Any, **kwargs: Any) -> autolabel.ThresholdEstimate:
        return autolabel.ThresholdEstimate(THRESHOLD, 12, 12, 1.0, 0.9, 0.9, 0.95, "target met")

    monkeypatch.setattr(autolabel, "estimate_threshold", estimate)
    return small


def test_model_labels_of_a_large_pool_are_re_derived_chunk_by_chunk(
    certified: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = certified
    t, ids = make_task(rt, auto_label={"evidence": "all"})
    human = set(ids[:12])
    # Model labels of version 0 (not on disk): one on an item nobody labelled, which the new
    # version must take back or confirm, one under a human label, which stays as it is.
    with rt.session() as s:
        s.add_all(
            Annotation(task_id=t, item_id=i, labels=["food"], source="model", model_version=0)
            for i in (ids[0], ids[-1])
        )
        set_covered(s, [ids[0], ids[-1]], True)
    scored: list[int] = []
    real = prediction.score_items

    def counted(rt_: Runtime, spec: TaskSpec, version: int, refs: Sequence[ItemRef]) -> Any:
        scored.append(len(refs))
        return real(rt_, spec, version, refs)

    monkeypatch.setattr(prediction, "score_items", counted)
    follow = jobs_of(rt, execute(rt, train_job(rt, t)))
    assert "autolabel" not in [j.kind for j in follow]  # no job predicts the whole pool
    (rescore,) = [j.id for j in follow if j.kind == "rescore"]
    # The training labelled items of its sample only (ids[0] is human, ids[-1] of version 0).
    sample = set(predicted(rt, t, 1))
    assert set(model_labels(rt, t)) - {ids[0], ids[-1]} <= sample
    chunks = execute(rt, rescore)
    planned = [i for j in jobs_of(rt, chunks) for i in j.payload["item_ids"]]
    # Every unlabelled item, the sample's included (an item scored on demand has no model label).
    assert sorted(planned) == sorted(set(ids) - human)
    # A person labels an item of the last chunk after it was planned: human labels win.
    late = jobs_of(rt, chunks[-1:])[0].payload["item_ids"][0]
    with rt.session() as s:
        s.add(Annotation(task_id=t, item_id=late, labels=["sport"], source="human"))
    human.add(late)
    for job_id in chunks:
        execute(rt, job_id)
    assert scored and max(scored) <= CHUNK  # no job scored more than a chunk
    stored = predicted(rt, t, 1)
    above = {i for i, p in stored.items() if p.score >= THRESHOLD and i not in human}
    assert above and set(ids) - human - above  # the threshold splits the pool
    labels = model_labels(rt, t)
    assert set(labels) - {ids[0]} == above  # exactly the items above the threshold
    assert labels[ids[0]].model_version == 0  # a human-labelled item keeps its old model label
    for i in above:
        assert labels[i].model_version == 1 and labels[i].labels == stored[i].labels
    with rt.session() as s:
        covered = dict(s.execute(select(Item.id, Item.covered).where(Item.task_id == t)).all())
        people = current_labels(s, t)
    assert {i for i in set(ids) - human if covered[i]} == above
    assert people[late] == ["sport"] and len(people) == 13
    done = jobs_of(rt, chunks)
    assert sum(int(j.result["model_labelled"]) for j in done) == len(above)
    # Rerunning a chunk (a redelivery, a copy of it) appends nothing.
    before = n_annotations(rt, t)
    with rt.session() as s:
        again = Job(
            task_id=t, kind="predict", key="again", payload={"version": 1, "item_ids": planned}
        )
        s.add(again)
        s.flush()
        again_id = again.id
    monkeypatch.setattr(rt.settings, "rescore_chunk", len(planned))
    execute(rt, again_id)
    assert n_annotations(rt, t) == before
    assert jobs_of(rt, [again_id])[0].result["changed"] == 0


def test_a_promotion_by_hand_re_derives_model_labels_in_chunks(certified: Runtime) -> None:
    rt = certified
    t, ids = make_task(rt, auto_label={"evidence": "all"})
    follow = jobs_of(rt, execute(rt, train_job(rt, t)))
    (rescore,) = [j.id for j in follow if j.kind == "rescore"]
    for job_id in execute(rt, rescore):
        execute(rt, job_id)
    derived = model_labels(rt, t)
    with rt.session() as s:  # version 0 served meanwhile, and took every model label back
        s.get_one(Task, t).served_version = 0
        s.add_all(
            Annotation(task_id=t, item_id=i, labels=None, source="model", model_version=0)
            for i in derived
        )
    assert not model_labels(rt, t)
    promote(rt, t, 1)  # the rollback
    with rt.session() as s:
        (job,) = s.scalars(
            select(Job).where(Job.task_id == t, Job.kind == "rescore", Job.state == "queued")
        )
        assert job.payload["all"] is True
        job_id = job.id
    chunks = execute(rt, job_id)
    # Every unlabelled item, although version 1 has scored them all before.
    planned = [i for j in jobs_of(rt, chunks) for i in j.payload["item_ids"]]
    assert sorted(planned) == ids[12:] and len(chunks) == -(-len(planned) // CHUNK)
    for chunk in chunks:
        execute(rt, chunk)
    assert {i: a.labels for i, a in model_labels(rt, t).items()} == {
        i: a.labels for i, a in derived.items()
    }
    # A job an earlier server queued for a promotion by hand plans the same chunks.
    with rt.session() as s:
        old = Job(task_id=t, kind="autolabel", key="old", payload={"version": 1})
        s.add(old)
        s.flush()
        old_id = old.id
    again = execute(rt, old_id)
    assert sorted(i for j in jobs_of(rt, again) for i in j.payload["item_ids"]) == ids[12:]
