"""A large task: a training reads the labelled items and a bounded sample of the pool; after a
promotion the pool is re-predicted by background chunk jobs, most uncertain first."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from labelloop.loop import autolabel, prediction, training
from labelloop.loop.executor import execute
from labelloop.loop.features import ItemRef
from labelloop.loop.labels import current_labels
from labelloop.loop.ranking import set_covered
from labelloop.loop.scheduling import rescore_job
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


def trained_rescore(rt: Runtime, t: int) -> int:
    """Train the task; the id of the rescoring job its promotion queued."""
    follow = execute(rt, train_job(rt, t))
    (rescore,) = [j.id for j in jobs_of(rt, follow) if j.kind == "rescore"]
    return rescore


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


def run_plan(
    rt: Runtime, first: Sequence[int], before: Callable[[int, list[int]], None] | None = None
) -> list[tuple[int, list[int]]]:
    """Run a rescoring's chunk jobs as each queues the next, from ``first``: each job and the ids
    it carried (read before it ran; ``before(n, ids)`` is called then, for the n-th chunk)."""
    ran: list[tuple[int, list[int]]] = []
    todo = list(first)
    while todo:
        job_id = todo.pop(0)
        (job,) = jobs_of(rt, [job_id])
        assert job.kind == "predict"
        ids = list(job.payload.get("item_ids", ()))
        if before is not None:
            before(len(ran), ids)
        ran.append((job_id, ids))
        follow = execute(rt, job_id)
        assert len(follow) <= 1  # a chunk queues at most the next one
        todo += follow
    return ran


def planned_ids(ran: list[tuple[int, list[int]]]) -> list[int]:
    return [i for _, ids in ran for i in ids]


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
    rescore = trained_rescore(rt, t)
    with rt.session() as s:
        version = s.get_one(Task, t).served_version
        old = {
            p.item_id: p.uncertainty
            for p in s.scalars(select(Prediction).where(Prediction.version == 0))
        }
    assert version == 1
    done_by_training = set(predicted(rt, t, 1))
    first = execute(rt, rescore)
    assert len(first) == 1  # the first chunk; each chunk queues the next
    assert execute(rt, rescore) == []  # a second delivery plans nothing more
    ran = run_plan(rt, first)
    chunks = [job_id for job_id, _ in ran]
    planned = planned_ids(ran)
    assert len(chunks) == -(-len(planned) // CHUNK)
    assert all(len(ids) == CHUNK for _, ids in ran[:-1])
    # Every item the new version has not scored and nobody labelled, once, the previous
    # version's most uncertain first.
    assert sorted(planned) == sorted(set(ids[12:]) - done_by_training)
    assert [old[i] for i in planned] == sorted((old[i] for i in planned), reverse=True)
    assert set(predicted(rt, t, 1)) == set(ids[12:])
    # A finished chunk keeps how many items it took, not their ids.
    assert sum(j.payload["items"] for j in jobs_of(rt, chunks)) == len(planned)
    assert not any("item_ids" in j.payload for j in jobs_of(rt, chunks))
    with rt.session() as s:  # each item marked with the promotion that rescored it
        marks = dict(s.execute(select(Item.id, Item.rescored).where(Item.task_id == t)).all())
        promotion = s.get_one(Task, t).promotions
    assert {i for i, m in marks.items() if m == promotion} == set(planned)


def test_a_newer_promotion_stops_older_chunks(small: Runtime) -> None:
    rt = small
    t, _ = make_task(rt)
    rescore = trained_rescore(rt, t)
    (first,) = execute(rt, rescore)
    (second,) = execute(rt, first)
    before = set(predicted(rt, t, 1))
    with rt.session() as s:  # another version is served now (a rollback, a newer training)
        s.get_one(Task, t).served_version = 0
    assert execute(rt, second) == []  # it skips, and the rest of the plan stops at once
    assert set(predicted(rt, t, 1)) == before
    assert jobs_of(rt, [second])[0].result == {"skipped": "superseded"}
    with rt.session() as s:
        chunks = s.scalars(select(Job.id).where(Job.task_id == t, Job.kind == "predict")).all()
    assert sorted(chunks) == sorted([first, second])


def test_a_promotion_of_the_same_version_stops_the_older_plan(small: Runtime) -> None:
    """A plan belongs to its promotion: another promotion (of the same version: a rollback and
    back) starts its own plan, and the older one's next chunk skips."""
    rt = small
    t, _ = make_task(rt)
    rescore = trained_rescore(rt, t)
    (first,) = execute(rt, rescore)
    with rt.session() as s:
        s.get_one(Task, t).promotions += 1
    assert execute(rt, first) == []
    assert jobs_of(rt, [first])[0].result == {"skipped": "superseded"}


def test_a_killed_chunk_job_reruns_to_the_same_result(
    small: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = small
    t, _ = make_task(rt)
    rescore = trained_rescore(rt, t)
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
    (successor,) = execute(rt, chunk)  # the redelivered job queues the next chunk
    (job,) = jobs_of(rt, [chunk])
    assert job.state == "done" and job.attempts == 2
    assert not set(item_ids) & set(jobs_of(rt, [successor])[0].payload["item_ids"])
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
    late: list[int] = []

    def label_one(n: int, chunk: list[int]) -> None:
        """A person labels an item of the second chunk after it was planned."""
        if n == 1:
            late.append(chunk[0])
            with rt.session() as s:
                s.add(Annotation(task_id=t, item_id=chunk[0], labels=["sport"], source="human"))

    ran = run_plan(rt, execute(rt, rescore), before=label_one)
    chunks = [job_id for job_id, _ in ran]
    planned = planned_ids(ran)
    # Every unlabelled item, the sample's included (an item scored on demand has no model label).
    assert sorted(planned) == sorted(set(ids) - human)
    (late_item,) = late
    human.add(late_item)  # human labels win
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
    assert people[late_item] == ["sport"] and len(people) == 13
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
    run_plan(rt, execute(rt, rescore))
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
    # Every unlabelled item, although version 1 has scored them all before.
    ran = run_plan(rt, execute(rt, job_id))
    planned = planned_ids(ran)
    assert sorted(planned) == ids[12:] and len(ran) == -(-len(planned) // CHUNK)
    assert {i: a.labels for i, a in model_labels(rt, t).items()} == {
        i: a.labels for i, a in derived.items()
    }
    # A job an earlier server queued for a promotion by hand plans as the rescore job does; the
    # promotion's items are rescored already, so it finds nothing left.
    with rt.session() as s:
        old = Job(task_id=t, kind="autolabel", key="old", payload={"version": 1})
        s.add(old)
        s.flush()
        old_id = old.id
    assert execute(rt, old_id) == []
    promote(rt, t, 0)  # a promotion of each version: the old job's plan takes every item
    promote(rt, t, 1)
    with rt.session() as s:
        s.execute(update(Job).where(Job.kind == "rescore").values(state="done"))
        again = Job(task_id=t, kind="autolabel", key="again", payload={"version": 1})
        s.add(again)
        s.flush()
        again_id = again.id
    assert sorted(planned_ids(run_plan(rt, execute(rt, again_id)))) == ids[12:]


def ranking(rt: Runtime, t: int) -> list[int]:
    """The task's unlabelled readable items in the order ``/next`` ranks them now."""
    with rt.session() as s:
        people = current_labels(s, t)
        order = s.scalars(
            select(Item.id)
            .where(Item.task_id == t, Item.status != "failed")
            .order_by(Item.covered, Item.rank, Item.lottery, Item.id)
        )
        return [i for i in order if i not in people]


def marks(rt: Runtime, t: int) -> dict[int, int]:
    with rt.session() as s:
        return dict(s.execute(select(Item.id, Item.rescored).where(Item.task_id == t)).all())


def test_each_promotion_rescores_the_head_and_the_tail_goes_on_stalest_first(
    small: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rescore_head`` items, most uncertain first, after every promotion; the rest (the
    tail) stalest first: a promotion that stops a tail leaves the next one to start where it
    stopped, not from the start."""
    rt = small
    head = 2 * CHUNK
    monkeypatch.setattr(rt.settings, "rescore_head", head)
    t, _ = make_task(rt, auto_label={"evidence": "all"})  # every item planned: "all"
    rescore = trained_rescore(rt, t)
    order = ranking(rt, t)
    # The first promotion: its head, then one chunk of its tail, then a newer promotion.
    (first,) = execute(rt, rescore)
    (second,) = execute(rt, first)
    (third,) = execute(rt, second)
    ran_head = order[:head]
    tail_chunk = jobs_of(rt, [third])[0].payload["item_ids"]
    assert not set(tail_chunk) & set(ran_head)
    execute(rt, third)
    done_first = {i for i, m in marks(rt, t).items() if m == 1}
    assert done_first == set(ran_head) | set(tail_chunk)
    with rt.session() as s:  # the next promotion (of the same version, by hand)
        task = s.get_one(Task, t)
        task.promotions += 1
        again = rescore_job(s, task, 1, everything=True).id
    order = ranking(rt, t)  # the ranks the first promotion's chunks wrote
    ran = run_plan(rt, execute(rt, again))
    planned = planned_ids(ran)
    assert sorted(planned) == sorted(order)  # every unlabelled item, once
    assert planned[:head] == order[:head]  # the head by the freshest ranks
    tail = planned[head:]
    stale = [i for i in tail if i not in done_first]
    # The tail: what the stopped tail had not reached first, then what it had rescored.
    assert tail[: len(stale)] == stale and set(tail[len(stale) :]) <= done_first
    assert set(marks(rt, t)[i] for i in order) == {2}


def test_a_chunk_that_fails_hands_the_plan_on(
    small: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = small
    t, ids = make_task(rt)
    rescore = trained_rescore(rt, t)
    (first,) = execute(rt, rescore)
    real = prediction.score_items

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the model's files are unreadable")

    monkeypatch.setattr(prediction, "score_items", broken)
    (second,) = execute(rt, first)  # failed, and the next chunk queued all the same
    (job,) = jobs_of(rt, [first])
    assert job.state == "failed" and "unreadable" in (job.error or "")
    monkeypatch.setattr(prediction, "score_items", real)
    run_plan(rt, [second])
    # The failed chunk's items come back in the plan's tail: the whole pool is scored.
    assert set(predicted(rt, t, 1)) == set(ids[12:])


def test_items_that_tie_on_the_ranking_are_each_rescored_once(
    small: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies of one text (one lottery place) with one score: the plan's position is a row."""
    rt = small
    monkeypatch.setattr(rt.settings, "rescore_head", 3 * CHUNK // 2)
    t, ids = make_task(rt)
    with rt.session() as s:
        s.execute(
            update(Item)
            .where(Item.id.in_(ids[12:]))
            .values(data="match bread item", lottery=7, rank=-0.5)
        )
    rescore = trained_rescore(rt, t)
    planned = planned_ids(run_plan(rt, execute(rt, rescore)))
    assert len(planned) == len(set(planned))
    assert set(planned) | set(predicted(rt, t, 1)) == set(ids[12:])
