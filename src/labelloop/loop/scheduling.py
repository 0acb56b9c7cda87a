"""Creating jobs inside the caller's transaction; the caller enqueues their ids after commit."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop.errors import InvalidInput
from labelloop.kinds import kind_for
from labelloop.learners.registry import has_learner
from labelloop.loop.labels import LabelSnapshot, current_labels, label_revision
from labelloop.loop.policy import Policy
from labelloop.store.models import ACTIVE_JOB_STATES, AuditPick, Item, Job, JobState, Task

FEATURIZE_BATCH = 64


def lock_task(session: Session, task_id: int) -> Task | None:
    """The task row, locked for the rest of the transaction (PostgreSQL; SQLite locks globally)."""
    return session.scalar(select(Task).where(Task.id == task_id).with_for_update())


def active_training(session: Session, task_id: int) -> Job | None:
    return session.scalar(
        select(Job).where(
            Job.task_id == task_id, Job.kind == "train", Job.state.in_(ACTIVE_JOB_STATES)
        )
    )


def last_training(session: Session, task_id: int) -> Job | None:
    """The newest training job, whatever its state (growth is measured from it)."""
    return session.scalar(
        select(Job)
        .where(Job.task_id == task_id, Job.kind == "train")
        .order_by(Job.id.desc())
        .limit(1)
    )


def last_training_size(session: Session, task_id: int) -> int | None:
    """Labels used by the newest training job, whatever its state (growth is measured from it)."""
    job = last_training(session, task_id)
    return None if job is None else int(job.payload.get("n_labels", 0))


def labelled_audits(session: Session, task_id: int, labelled: Iterable[int]) -> int:
    """How many labelled items were handed out as random audits (the auto-label evidence)."""
    picked = set(session.scalars(select(AuditPick.item_id).where(AuditPick.task_id == task_id)))
    return len(picked.intersection(labelled))


def _evidence_due(session: Session, task: Task, policy: Policy, labels: Iterable[int]) -> bool:
    """Auto-labelling: enough audits for a claim since the last training (see ``evidence_step``)."""
    auto = policy.auto_label
    if auto is None or auto.evidence_step is None or task.served_version is None:
        return False
    from labelloop.loop.autolabel import min_evidence, model_label_target  # (imports this module)

    labelled = list(labels)
    items = session.scalar(
        select(func.count())
        .select_from(Item)
        .where(Item.task_id == task.id, Item.status != "failed")
    )
    need = min_evidence(model_label_target(auto, int(items or 0), len(labelled)), auto.confidence)
    audits = labelled_audits(session, task.id, labelled)
    job = last_training(session, task.id)
    last = None if job is None else job.payload.get("audits")
    return auto.evidence_due(audits, None if last is None else int(last), need)


def request_training(
    session: Session, task: Task, *, force: bool = False, snapshot: LabelSnapshot | None = None
) -> Job | None:
    """Create the task's next training job if its policy says so (or ``force``).

    While a job is active no second one starts; a trigger that arrives meanwhile sets the task's
    ``train_pending`` flag, which makes exactly one more run follow the active one. ``snapshot``
    (the human labels read before the write lock) is brought up to date instead of reading the
    whole log here.
    """
    if not has_learner(task.category, task.extra):
        if force:
            raise InvalidInput(
                f"no learner serves {task.category} tasks yet: label without a model"
            )
        return None
    kind = kind_for(task.category, task.extra)
    labels = current_labels(session, task.id) if snapshot is None else snapshot.current(session)
    n_classes = len({label for value in labels.values() for label in kind.classes(value)})
    if task.extra == "multi-label":
        n_classes = max(n_classes, 2 if labels else 0)
    policy = Policy.model_validate(task.policy)
    last = last_training_size(session, task.id)
    enough = n_classes >= kind.min_classes
    due = policy.training_due(len(labels), n_classes, last, kind.min_classes)
    if not due and enough and len(labels) >= policy.min_labels:
        due = _evidence_due(session, task, policy, labels)
    if not (due or force):
        return None
    if len(labels) < 2 or not enough:
        raise InvalidInput(
            "training needs labelled items of at least two classes"
            if kind.min_classes > 1
            else "training needs at least two labelled items"
        )
    if active_training(session, task.id) is not None:
        task.train_pending = True
        return None
    revision = label_revision(session, task.id)
    key = f"train:{task.id}:{revision}"
    existing = session.scalar(select(Job).where(Job.key == key))
    if existing is not None:
        return existing if force else None
    job = Job(
        task_id=task.id,
        kind="train",
        key=key,
        payload={"revision": revision, "n_labels": len(labels)}
        | (
            {"audits": labelled_audits(session, task.id, labels)}
            if policy.auto_label is not None
            else {}
        ),
    )
    session.add(job)
    session.flush()
    return job


def after_training(session: Session, task: Task) -> list[Job]:
    """Called when a training job ends: the one pending run, or a run the policy now wants."""
    force = task.train_pending
    task.train_pending = False
    try:
        job = request_training(session, task, force=force)
    except InvalidInput:
        return []
    return [job] if job is not None and job.state == JobState.QUEUED else []


def featurize_jobs(session: Session, task_id: int, item_ids: list[int]) -> list[Job]:
    jobs = []
    for start in range(0, len(item_ids), FEATURIZE_BATCH):
        chunk = item_ids[start : start + FEATURIZE_BATCH]
        key = f"featurize:{task_id}:{chunk[0]}-{chunk[-1]}:{len(chunk)}"
        if session.scalar(select(Job.id).where(Job.key == key)) is not None:
            continue
        job = Job(task_id=task_id, kind="featurize", key=key, payload={"item_ids": chunk})
        session.add(job)
        jobs.append(job)
    session.flush()
    return jobs


def rescore_job(session: Session, task: Task, version: int, everything: bool = False) -> Job:
    """After a promotion: the job that starts the pool's re-prediction in chunk jobs (in the
    background, most uncertain first; :mod:`labelloop.loop.rescoring`); over every unlabelled
    item when ``everything`` (a promotion by hand: a version served before may have stored
    pre-labels of items whose model labels a later one changed)."""
    job = Job(
        task_id=task.id,
        kind="rescore",
        key=f"rescore:{task.id}:{version}:{task.promotions}",
        payload={"version": version, "all": True} if everything else {"version": version},
    )
    session.add(job)
    session.flush()
    return job
