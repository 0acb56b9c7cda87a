"""The ML-backend protocol Label Studio speaks, over labelloop's service functions.

A Label Studio project maps to one labelloop task, created from the project's labelling config the
first time the project calls (``/setup``, or any ``/predict`` or ``/webhook``: all carry the
config). A Label Studio task becomes an item with ``external_id = "ls:<task id>"``; its media link
is stored relative (``/data/upload/...``) and read from ``LABELLOOP_LABELSTUDIO_URL`` when set,
else from the URL the project sent at setup (:mod:`labelloop.labelstudio.links`). When none of the
tasks of a ``/predict`` call can be read, the answer is an error that Label Studio shows, with
the reason. Annotations arrive by webhook and are
appended through :func:`labelloop.service.labelling.submit`, which only *queues* training: no
request ever trains. A deleted annotation becomes a retraction (an annotation with labels null).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from labelloop import __version__
from labelloop.config import Settings
from labelloop.errors import Conflict, FetchError, InvalidInput, NotFound
from labelloop.fetch import LinkChecker, read_link
from labelloop.jobs.base import DataPrediction
from labelloop.labelstudio import links, writer
from labelloop.labelstudio.config import LabelConfig, parse_label_config
from labelloop.loop.policy import Policy
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.schemas import TaskPublic
from labelloop.service import items as item_service
from labelloop.service import labelling, models, tasks
from labelloop.service.common import enqueue, task_spec
from labelloop.service.predictions import current_predictions
from labelloop.store.models import Item, Job, LabelStudioAnnotation, LabelStudioProject, Task

log = logging.getLogger(__name__)

EXTERNAL_PREFIX = "ls:"
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
DELETE_EVENTS = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")
TRAIN_EVENTS = ("START_TRAINING",)


def version_name(version: int | None) -> str | None:
    """The model version as Label Studio shows it: the name of the version's folder."""
    return None if version is None else f"model-time{version}"


@dataclass(frozen=True)
class Link:
    """A connected project: its row, its task, its Label Studio URL and its parsed config."""

    id: int
    project: str
    task_id: int
    url: str | None
    config: LabelConfig


def split_project(value: object) -> tuple[str, str | None]:
    """Label Studio names a project ``"<id>.<created timestamp>"`` (or just the id, in webhooks)."""
    if isinstance(value, dict):
        value = value.get("id")
    text = str(value if value is not None else "").strip()
    project, _, stamp = text.partition(".")
    if not project.isdigit():
        raise InvalidInput(f"not a Label Studio project id: {text!r}")
    return project, (text if stamp else None)


def _row_link(row: LabelStudioProject) -> Link:
    return Link(row.id, row.project, row.task_id, row.url, LabelConfig.from_dict(row.config))


@lru_cache(maxsize=256)
def _parsed(label_config: str) -> LabelConfig:
    """A labelling config parsed once per process (every call carries it; few projects exist)."""
    return parse_label_config(label_config)


def _linked(rt: Runtime, project: str, uid: str | None, label_config: str) -> tuple[Link, TaskSpec]:
    """The project's link and its task's spec, read in one transaction in the common case (the
    project is connected with this config); else as :func:`connect` makes it. The task's row is
    read on every call, so a promoted version serves from the next call on."""
    config = _parsed(label_config)
    with rt.reading() as s:
        row = s.scalar(select(LabelStudioProject).where(LabelStudioProject.project == project))
        task = None if row is None else s.get(Task, row.task_id)
        if (
            row is not None
            and task is not None
            and (uid is None or row.uid == uid)
            and row.config == config.as_dict()
        ):
            return Link(row.id, row.project, row.task_id, row.url, config), TaskSpec.of(task)
    link = connect(rt, project, uid, label_config)
    return link, task_spec(rt, link.task_id)


def connect(
    rt: Runtime, project: str, uid: str | None, label_config: str, url: str | None = None
) -> Link:
    """The project's link (see :func:`_connect`); the URL it sent is kept in its task's folder."""
    link = _connect(rt, project, uid, label_config, url)
    if link.url:
        links.remember_project(rt.folder(link.task_id), link.url)
    return link


def _connect(
    rt: Runtime, project: str, uid: str | None, label_config: str, url: str | None = None
) -> Link:
    """The project's link, creating its task when the project is new or its config changed.

    A changed config that still maps to the same task shape keeps the task; one with other labels
    or another object type gets a new task (the old one stays, with its labels and models).
    """
    config = _parsed(label_config)
    base = links.normalize_url(url) if url else None
    with rt.reading() as s:  # the common case, on every call: connected, nothing to change
        row = s.scalar(select(LabelStudioProject).where(LabelStudioProject.project == project))
        if (
            row is not None
            and (uid is None or row.uid == uid)
            and (base is None or row.url == base)
            and LabelConfig.from_dict(row.config) == config
            and s.get(Task, row.task_id) is not None
        ):
            return _row_link(row)
    with rt.session() as s:
        row = s.scalar(select(LabelStudioProject).where(LabelStudioProject.project == project))
        if row is not None and s.get(Task, row.task_id) is not None:
            same_project = uid is None or row.uid is None or row.uid == uid
            if same_project and LabelConfig.from_dict(row.config) == config:
                if base and row.url != base:
                    row.url = base
                if uid and row.uid is None:
                    row.uid = uid
                return _row_link(row)
    created = _create_task(rt, project, config)
    try:
        with rt.session() as s:
            row = s.scalar(select(LabelStudioProject).where(LabelStudioProject.project == project))
            if row is None:
                row = LabelStudioProject(project=project, uid=uid, task_id=created["id"], url=base)
                s.add(row)
            else:
                s.execute(
                    delete(LabelStudioAnnotation).where(LabelStudioAnnotation.project_id == row.id)
                )
                row.task_id, row.uid, row.url = created["id"], uid or row.uid, base or row.url
            row.config = config.as_dict()
            s.flush()
            log.info("Label Studio project %s is served by task %s", project, created["id"])
            return _row_link(row)
    except IntegrityError:
        # Another request connected the same new project first: use its task, drop ours.
        tasks.delete_task(rt, created["id"])
        with rt.session() as s:
            row = s.scalar(select(LabelStudioProject).where(LabelStudioProject.project == project))
            if row is None:
                raise
            return _row_link(row)


def _create_task(rt: Runtime, project: str, config: LabelConfig) -> TaskPublic:
    """A new task for the project, named after it (``(2)``… when a task has the name already)."""
    for attempt in range(3):
        with rt.session() as s:
            name = tasks.free_name(s, f"Label Studio project {project}")
        try:
            return tasks.create_task(
                rt,
                tasks.TaskCreate(
                    name=name,
                    category=config.category,
                    extra=config.extra,
                    labels=list(config.labels),
                ),
            )
        except Conflict:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def health() -> dict[str, Any]:
    return {"status": "UP", "model_class": "labelloop", "version": __version__}


def setup(rt: Runtime, body: dict[str, Any]) -> dict[str, Any]:
    """Connect a project: parse its config, keep its URL and token, answer the served version."""
    project, uid = split_project(body.get("project"))
    url = body.get("hostname") or None
    if url is not None and not isinstance(url, str):
        raise InvalidInput("hostname must be a URL")
    link = connect(rt, project, uid, str(body.get("schema") or ""), url)
    token = body.get("access_token")
    if url and isinstance(token, str) and token:
        links.remember(rt.settings, url, token)
        if rt.settings.labelstudio_url and rt.settings.labelstudio_token is None:
            # The operator's URL wins over the one sent (which labelloop may not reach): the
            # token the project sent goes with requests to the operator's URL.
            links.remember(rt.settings, rt.settings.labelstudio_url, token)
    spec = task_spec(rt, link.task_id)
    return {"model_version": version_name(spec.served_version), "task_id": link.task_id}


def _item_data(task: dict[str, Any], link: Link, settings: Settings) -> str | None:
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    value = data.get(link.config.value_key)
    if not isinstance(value, str) or not value.strip():
        return None
    if link.config.object_type == "Image":
        # Stored relative to the project's URL: where Label Studio is reached is decided when
        # the media is read (the operator's setting wins over the address sent at setup).
        return links.relative(value.strip(), [link.url, settings.labelstudio_url])
    return value


def ingest(
    rt: Runtime,
    link: Link,
    ls_tasks: list[dict[str, Any]],
    refused: dict[int, str] | None = None,
    deferred: list[Job] | None = None,
) -> dict[int, int]:
    """Store Label Studio tasks as items (idempotent); Label Studio task id -> item id. Tasks
    whose link labelloop may not read are left out (with the reason in ``refused``). With
    ``deferred``, the new items' featurize jobs are put there for the caller to queue."""
    specs: list[item_service.ItemIn] = []
    seen: set[int] = set()
    checker = (
        LinkChecker(rt.settings, rt.folder(link.task_id))
        if link.config.object_type == "Image"
        else None
    )
    for t in ls_tasks:
        tid = t.get("id")
        if not isinstance(tid, int) or tid in seen:
            continue
        data = _item_data(t, link, rt.settings)
        if data is None:
            continue
        seen.add(tid)
        if checker is not None:
            try:
                checker.check(data)
            except FetchError as exc:
                # One task with a link labelloop may not read must not fail the whole batch: it
                # gets no item (so no pre-label, and its annotations are ignored), and the log says why.
                log.warning("Label Studio task %s is not taken: %s", tid, exc.message)
                if refused is not None:
                    refused[tid] = exc.message
                continue
        specs.append(item_service.ItemIn(data=data, external_id=f"{EXTERNAL_PREFIX}{tid}"))
    if not specs:
        return {}
    added, jobs = item_service.store_items(rt, link.task_id, specs)
    if deferred is None:
        enqueue(rt, jobs)
    else:
        deferred.extend(jobs)
    return {int(it["external_id"][len(EXTERNAL_PREFIX) :]): int(it["id"]) for it in added["items"]}


def _result(
    link: Link, value: list[Any], score: float | None, text: str | None
) -> list[dict[str, Any]]:
    """A pre-label in Label Studio's result format, as the task's kind writes it."""
    cfg = link.config
    return cfg.kind.labelstudio_result(value, score, cfg.from_name, cfg.to_name, text)


def predict(rt: Runtime, body: dict[str, Any]) -> dict[str, Any]:
    """Pre-labels for a batch of Label Studio tasks, one entry per task, in order.

    Before the first model (or for a task whose data cannot be read) the entry is an empty list:
    Label Studio then stores no prediction for it and asks again once a version serves. When
    none of the tasks' images can be read, the answer is an error with the reason.
    """
    project, uid = split_project(body.get("project"))
    ls_tasks = body.get("tasks")
    if not isinstance(ls_tasks, list) or not all(isinstance(t, dict) for t in ls_tasks):
        raise InvalidInput("tasks must be a list of Label Studio tasks")
    link, spec = _linked(rt, project, uid, str(body.get("label_config") or ""))
    in_cluster = rt.has_jobs and rt.jobs.name == "celery"
    if link.config.object_type == "Text" and (not _costly(spec) or in_cluster):
        # In a cluster the inference workers answer from the texts and the data workers compute
        # the stored items' embeddings on their own machines: nothing waits for a write.
        return _predict_texts(rt, link, spec, ls_tasks)
    refused: dict[int, str] = {}
    # The new items' featurize jobs wait until this request has computed their features (to
    # predict them), so that a worker does not compute the same embeddings at the same time.
    deferred: list[Job] = []
    try:
        ids = ingest(rt, link, ls_tasks, refused, deferred)
        spec = task_spec(rt, link.task_id)
        name = version_name(spec.served_version)
        preds = current_predictions(rt, spec, list(ids.values())) if name is not None else {}
    finally:
        enqueue(rt, deferred)
    if ls_tasks and link.config.object_type == "Image":
        _readable_or_raise(rt, link, list(ids.values()), preds, refused)
    results: list[Any] = []
    kind = link.config.kind
    for t in ls_tasks:
        p = preds.get(ids.get(t.get("id"), -1))
        if p is None or p.get("status") != "ok":
            results.append([])
            continue
        text = _item_data(t, link, rt.settings) if link.config.object_type == "Text" else None
        results.append(
            {
                "result": _result(link, list(p[kind.value_field]), p["score"], text),
                "score": p["score"],
                "model_version": name,
            }
        )
    return {"results": results, "model_version": name}


@lru_cache(maxsize=256)
def _costly_policy(category: str, extra: str, labels: tuple[str, ...], policy: str) -> bool:
    spec = TaskSpec(
        id=0,
        name="",
        category=category,
        extra=extra,
        labels=labels,
        policy=Policy.model_validate_json(policy),
        salt="",
        served_version=None,
    )
    return spec.has_learner and any(f.cacheable for f in spec.new_learner().featurizers())


def _costly(spec: TaskSpec) -> bool:
    """Whether the task's items are featurized at a cost that is kept (sentence embeddings): such
    a task's /predict stores its items first, so that what it computes is cached for them."""
    return _costly_policy(
        spec.category,
        spec.extra,
        spec.labels,
        spec.policy.model_dump_json(),
    )


def _predict_texts(
    rt: Runtime, link: Link, spec: TaskSpec, ls_tasks: list[dict[str, Any]]
) -> dict[str, Any]:
    """Pre-labels of a text project's tasks from the texts the request carries; the tasks are
    stored as items, with their pre-labels, after the answer (:mod:`labelloop.labelstudio.writer`).
    Nothing is queued when the request fails."""
    order: dict[int, int] = {}
    entries: list[item_service.ItemIn] = []
    for t in ls_tasks:
        tid = t.get("id")
        if not isinstance(tid, int) or tid in order:
            continue
        data = _item_data(t, link, rt.settings)
        if data is None:
            continue
        order[tid] = len(entries)
        entries.append(item_service.ItemIn(data=data, external_id=f"{EXTERNAL_PREFIX}{tid}"))
    if len(entries) > rt.settings.max_items_per_request:
        raise InvalidInput(f"at most {rt.settings.max_items_per_request} items per request")
    version = spec.served_version
    name = version_name(version)
    answers: list[DataPrediction | None] = [None] * len(entries)
    if version is not None and entries:
        answers = list(rt.jobs.predict_data(spec, version, [e.data for e in entries]))
    results: list[Any] = []
    for t in ls_tasks:
        at = order.get(t.get("id"))  # type: ignore[arg-type]
        a = None if at is None else answers[at]
        if a is None or a.error is not None or a.labels is None:
            results.append([])
            continue
        text = entries[at].data if at is not None else None
        results.append(
            {
                "result": _result(link, list(a.labels), a.score, text),
                "score": a.score,
                "model_version": name,
            }
        )
    if entries:
        writer.writer(rt).submit(writer.Pending(link.task_id, version, entries, answers))
    return {"results": results, "model_version": name}


#: Before the first model, a /predict call reads at most this many of its tasks' images to find
#: out whether any can be read (what is read is kept: the featurize job does not fetch it again).
PROBE = 5


def _readable_or_raise(
    rt: Runtime,
    link: Link,
    item_ids: list[int],
    preds: dict[int, dict[str, Any]],
    refused: dict[int, str],
) -> None:
    """Raise the reason when none of a /predict call's images can be read, so that Label Studio
    shows an error instead of a connected backend that silently predicts nothing."""
    if not item_ids:
        reason = next(iter(refused.values()), "no task has an image")
        raise FetchError(f"labelloop cannot read the images of these Label Studio tasks: {reason}")
    if preds:
        if any(p.get("status") == "ok" for p in preds.values()):
            return
        error = next((str(p.get("error")) for p in preds.values() if p.get("error")), None)
        if error is not None:
            raise FetchError(f"labelloop cannot read the images of these tasks: {error}")
        return
    with rt.session() as s:
        rows = s.execute(
            select(Item.id, Item.data, Item.status, Item.error).where(Item.id.in_(item_ids))
        ).all()
    if any(r.status == "ready" for r in rows):
        return
    failed = [str(r.error) for r in rows if r.status == "failed" and r.error]
    why: str | None = failed[0] if failed and len(failed) == len(rows) else None
    if why is None:
        folder = rt.folder(link.task_id)
        for r in [r for r in rows if r.status == "pending"][:PROBE]:
            try:
                read_link(r.data, rt.settings, folder)
                return
            except FetchError as exc:
                why = exc.message
    if why is not None:
        raise FetchError(f"labelloop cannot read the images of these tasks: {why}")


def _labels_of(annotation: dict[str, Any], link: Link) -> list[Any] | None:
    """The value an annotation gives for the project's control; ``None`` when it gives none."""
    if annotation.get("was_cancelled"):
        return None
    results = annotation.get("result") or []
    if not isinstance(results, list):
        return None
    return link.config.kind.labelstudio_value(results, link.config.from_name)


def _annotator(annotation: dict[str, Any]) -> str | None:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("id")
    return None if who is None else f"labelstudio:{who}"


#: How long an annotation waits for the write-behind before it stores its tasks itself.
FLUSH_WAIT_S = 5.0


def _stored_items(rt: Runtime, link: Link, task_ids: list[Any]) -> dict[int, int]:
    """Label Studio task id -> item id, for tasks already stored as items."""
    ext = [f"{EXTERNAL_PREFIX}{t}" for t in task_ids if isinstance(t, int)]
    if not ext:
        return {}
    with rt.reading() as s:
        rows = s.execute(
            select(Item.external_id, Item.id).where(
                Item.task_id == link.task_id, Item.external_id.in_(ext)
            )
        ).all()
    return {int(str(e)[len(EXTERNAL_PREFIX) :]): int(i) for e, i in rows}


def _mapped_items(rt: Runtime, link: Link, annotation_ids: list[int]) -> dict[int, int]:
    with rt.session() as s:
        return dict(
            s.execute(
                select(LabelStudioAnnotation.annotation_id, LabelStudioAnnotation.item_id).where(
                    LabelStudioAnnotation.project_id == link.id,
                    LabelStudioAnnotation.annotation_id.in_(annotation_ids),
                )
            ).all()
        )


def _annotations(
    rt: Runtime, link: Link, pairs: list[tuple[dict[str, Any], dict[str, Any]]]
) -> dict[str, Any]:
    """Append the labels of (annotation, Label Studio task) pairs; returns what submit answered.

    The tasks' items are those a ``/predict`` stored (the write-behind is waited for first), or
    stored here from the event's data when it has not (yet, or at all); a task the event carries
    without its data is found by its external id."""
    if not writer.flush(rt, FLUSH_WAIT_S):
        log.warning("Label Studio write-behind is late; the event's tasks are stored from it")
    ids = ingest(rt, link, [t for _, t in pairs])
    ids.update(_stored_items(rt, link, [t.get("id") for _, t in pairs if t.get("id") not in ids]))
    known = _mapped_items(rt, link, [a["id"] for a, _ in pairs if isinstance(a.get("id"), int)])
    todo: list[labelling.AnnotationIn] = []
    maps: list[tuple[int, int, bool]] = []
    ignored = 0
    for annotation, task in pairs:
        item_id = ids.get(task.get("id"))  # type: ignore[arg-type]
        ann_id = annotation.get("id")
        if item_id is None or not isinstance(ann_id, int):
            ignored += 1
            continue
        labels = _labels_of(annotation, link)
        if labels is None and ann_id not in known:
            ignored += 1  # skipped, or empty, and never labelled before: nothing to record
            continue
        todo.append(
            labelling.AnnotationIn.model_validate(
                {
                    "item_id": item_id,
                    link.config.kind.value_field: labels,
                    "annotator": _annotator(annotation),
                }
            )
        )
        maps.append((ann_id, item_id, labels is None))
    if not todo:
        return {"status": "ignored", "reason": "no choices for this project's control", "n": 0}
    answer = labelling.submit(rt, link.task_id, todo)
    with rt.session() as s:
        for ann_id, item_id, retracted in maps:
            row = s.get(LabelStudioAnnotation, (link.id, ann_id))
            if retracted:
                if row is not None:
                    s.delete(row)
            elif row is None:
                s.add(
                    LabelStudioAnnotation(project_id=link.id, annotation_id=ann_id, item_id=item_id)
                )
    return {
        "status": "ok",
        "n": len(todo),
        "ignored": ignored,
        "revision": answer["revision"],
        "training_triggered": answer["training_triggered"],
    }


def _retract(rt: Runtime, link: Link, annotation_ids: list[int]) -> dict[str, Any]:
    """Deleted annotations: retract the item's label unless another annotation of it remains."""
    mapped = _mapped_items(rt, link, annotation_ids)
    if not mapped:
        return {"status": "ignored", "reason": "unknown annotations", "n": 0}
    with rt.session() as s:
        s.execute(
            delete(LabelStudioAnnotation).where(
                LabelStudioAnnotation.project_id == link.id,
                LabelStudioAnnotation.annotation_id.in_(list(mapped)),
            )
        )
        still = set(
            s.scalars(
                select(LabelStudioAnnotation.item_id).where(
                    LabelStudioAnnotation.project_id == link.id,
                    LabelStudioAnnotation.item_id.in_(list(mapped.values())),
                )
            )
        )
    retract = sorted({i for i in mapped.values() if i not in still})
    if not retract:
        return {"status": "ok", "n": 0}
    answer = labelling.submit(
        rt,
        link.task_id,
        [
            labelling.AnnotationIn.model_validate(
                {"item_id": i, link.config.kind.value_field: None}
            )
            for i in retract
        ],
    )
    return {"status": "ok", "n": len(retract), "revision": answer["revision"]}


def _as_list(value: object) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def webhook(rt: Runtime, body: dict[str, Any]) -> dict[str, Any]:
    """Label Studio's events: annotations feed the loop, "start training" queues a run."""
    action = str(body.get("action") or "")
    known = (*ANNOTATION_EVENTS, *DELETE_EVENTS, *TRAIN_EVENTS)
    if action not in known:
        return {"status": "ignored", "action": action}
    project_body = body.get("project")
    if not isinstance(project_body, dict):
        raise InvalidInput(f"{action}: the event carries no project")
    project, _ = split_project(project_body)
    link = connect(rt, project, None, str(project_body.get("label_config") or ""))
    if action in TRAIN_EVENTS:
        out = models.train_now(rt, link.task_id)
        return {"status": "ok", "action": action, "job_id": out["job_id"]}
    if action in DELETE_EVENTS:
        ids = [a["id"] for a in _as_list(body.get("annotations") or body.get("annotation"))]
        return {"action": action, **_retract(rt, link, [i for i in ids if isinstance(i, int)])}
    annotations = _as_list(body.get("annotation"))
    ls_tasks = {t.get("id"): t for t in _as_list(body.get("task"))}
    pairs = []
    for a in annotations:
        tid = a.get("task")
        if isinstance(tid, dict):
            tid = tid.get("id")
        task = ls_tasks.get(tid)
        if task is not None:
            pairs.append((a, task))
    if not pairs:
        raise InvalidInput(f"{action}: no annotation with its task in the event")
    return {"action": action, **_annotations(rt, link, pairs)}


def train(rt: Runtime, body: dict[str, Any]) -> dict[str, Any]:
    """The older ``/train`` call: every annotated task at once, then a training run is queued."""
    project, uid = split_project(body.get("project"))
    link = connect(rt, project, uid, str(body.get("label_config") or ""))
    pairs = []
    for t in _as_list(body.get("annotations")):
        done = [a for a in _as_list(t.get("annotations")) if not a.get("was_cancelled")]
        if done:
            pairs.append((done[-1], t))
    answer = _annotations(rt, link, pairs) if pairs else {"n": 0}
    try:
        job = models.train_now(rt, link.task_id)
    except InvalidInput as exc:
        return {"status": "not_trained", "detail": exc.message, "n": answer.get("n", 0)}
    return {"status": "ok", "job_id": job["job_id"], "n": answer.get("n", 0)}


def project_task(rt: Runtime, project: str) -> int:
    """The labelloop task that serves a Label Studio project (for operators and tests)."""
    with rt.session() as s:
        row = s.scalar(select(LabelStudioProject).where(LabelStudioProject.project == project))
        if row is None:
            raise NotFound(f"Label Studio project {project} is not connected")
        return row.task_id
