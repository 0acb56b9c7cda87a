"""The Celery backend against the machine's RabbitMQ (a vhost of this session's own): jobs go to
the queue of their kind, predictions wait with a time-out and fail with a clear 503/504, and a
broker that is away never loses a job."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Consumer
from kombu.entity import Queue
from kombu.message import Message

from labelloop.config import Settings
from labelloop.errors import ConfigError, LabelloopError, NotFound, Timeout, Unavailable
from labelloop.jobs.celery_app import make_app, task_queues
from labelloop.jobs.celery_backend import CeleryJobs, raise_remote
from labelloop.jobs.factory import make_backend
from labelloop.loop.policy import Policy
from labelloop.loop.spec import TaskSpec
from labelloop.runtime import Runtime
from labelloop.store.models import Job, Task

pytestmark = pytest.mark.rabbitmq

SPEC = TaskSpec(
    id=1,
    name="t",
    category="image-classification",
    extra="multi-class",
    labels=("a", "b"),
    policy=Policy(),
    salt="s",
    served_version=0,
)


@pytest.fixture
def vhost_url(broker_vhost: str) -> Iterator[str]:
    """The session's vhost, with its queues emptied (and removed) after each test."""
    yield broker_vhost
    with Connection(broker_vhost) as conn:
        channel = conn.channel()
        for name in ("data", "train", "inference", "dead"):
            channel.queue_delete(name)


def runtime(tmp_path: Path, broker: str, **settings: object) -> Runtime:
    rt = Runtime(
        Settings(data_dir=tmp_path / "data", broker_url=broker, jobs="celery", **settings),  # type: ignore[arg-type]
        migrate_schema=True,
    )
    return rt


def test_the_factory_picks_celery(tmp_path: Path, vhost_url: str) -> None:
    rt = runtime(tmp_path, vhost_url)
    assert isinstance(make_backend(rt), CeleryJobs)
    rt.close()


def test_queues_are_durable_quorum_queues_with_a_delivery_limit() -> None:
    queues = {q.name: q for q in task_queues(Settings(broker_delivery_limit=7))}
    assert set(queues) == {"data", "train", "inference"}
    for q in queues.values():
        assert q.durable and q.queue_arguments["x-queue-type"] == "quorum"
        assert q.queue_arguments["x-delivery-limit"] == 7
        assert q.queue_arguments["x-dead-letter-exchange"] == "labelloop.dead"
    classic = task_queues(Settings(broker_queue_type="classic"))
    assert all("x-queue-type" not in q.queue_arguments for q in classic)


def test_app_settings_for_trustworthy_delivery() -> None:
    app = make_app(Settings(train_time_limit_s=1000))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    with pytest.raises(ConfigError, match="rpc://"):
        make_app(Settings(result_backend="redis://127.0.0.1:6379/0"))


def test_jobs_go_to_the_queue_of_their_kind_and_wait_out_a_broker_outage(
    tmp_path: Path, vhost_url: str
) -> None:
    rt = runtime(tmp_path, vhost_url)
    with rt.session() as s:
        task = Task(
            name="t",
            category="image-classification",
            extra="multi-class",
            labels=["a", "b"],
            policy={},
            salt="s",
        )
        s.add(task)
        s.flush()
        jobs = [
            Job(task_id=task.id, kind=kind, key=f"{kind}:{uuid.uuid4().hex}")
            for kind in ("featurize", "train", "predict", "featurize")
        ]
        s.add_all(jobs)
        s.flush()
        ids = [j.id for j in jobs]
    backend = CeleryJobs(rt)
    backend.start()  # declares the queues and publishes the jobs the store holds as queued
    try:
        depths = backend.queue_depths()
        assert depths["data"]["ready"] == 2
        assert depths["train"]["ready"] == 1 and depths["inference"]["ready"] == 1
        # Each message is the Celery task of its queue with the job id, and nothing else.
        with Connection(vhost_url) as conn:
            msg = conn.SimpleQueue(Queue("train", no_declare=True)).get(timeout=5)
            assert msg.headers["task"] == "labelloop.train_job"
            assert msg.payload[0] == [ids[1]] and msg.payload[1] == {}
            msg.ack()
        backend.enqueue([ids[1]])
        assert backend.queue_depths()["train"]["ready"] == 1
    finally:
        backend.stop()

    # The broker is away: enqueue never raises, the job waits for it.
    away = CeleryJobs(runtime(tmp_path, "amqp://guest:guest@127.0.0.1:1//"))
    away.enqueue([ids[0]])
    assert away.unsent == [ids[0]]
    status = away.status()
    assert status["broker_ok"] is False and status["unsent_jobs"] == [ids[0]]
    assert "guest:guest" not in str(status)
    rt.close()


def test_a_broker_that_is_away_is_a_503_at_once(tmp_path: Path) -> None:
    rt = runtime(tmp_path, "amqp://guest:secret-pass@127.0.0.1:1//")
    backend = CeleryJobs(rt)
    started = time.monotonic()
    with pytest.raises(Unavailable) as err:
        backend.predict_data(SPEC, 0, ["x"])
    assert time.monotonic() - started < 5
    assert "broker" in err.value.message and "secret-pass" not in err.value.message
    assert err.value.status_code == 503
    backend.stop()
    rt.close()


def test_no_inference_worker_is_a_503(tmp_path: Path, vhost_url: str) -> None:
    rt = runtime(tmp_path, vhost_url, predict_timeout_s=0.5)
    backend = CeleryJobs(rt)
    with pytest.raises(Unavailable, match="no inference worker is running"):
        backend.predict_items(SPEC, 0, [1, 2])
    backend.stop()
    rt.close()


def test_a_worker_that_does_not_answer_in_time_is_a_504(tmp_path: Path, vhost_url: str) -> None:
    rt = runtime(tmp_path, vhost_url, predict_timeout_s=0.5)
    backend = CeleryJobs(rt)
    backend.start()
    held: list[Message] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            backend.predict_data(SPEC, 0, ["x"])
        except LabelloopError as exc:
            errors.append(exc)

    # A consumer on the inference queue that takes requests and never answers.
    queue = next(q for q in backend.app.conf.task_queues if q.name == "inference")
    with (
        Connection(vhost_url) as conn,
        Consumer(conn, [queue], callbacks=[lambda _body, msg: held.append(msg)]),
    ):
        waiting = threading.Thread(target=call)
        waiting.start()
        while waiting.is_alive():
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.1)
    assert len(errors) == 1 and isinstance(errors[0], Timeout)
    assert errors[0].message == "no inference worker answered within 0.5 s"
    assert errors[0].status_code == 504
    assert held and held[0].headers["task"] == "labelloop.predict_data"
    assert held[0].headers["expires"] is not None  # the request dies with its waiter
    backend.stop()
    rt.close()


def test_errors_sent_back_by_workers_keep_their_kind() -> None:
    with pytest.raises(NotFound) as err:
        raise_remote({"code": "not_found", "message": "task 1 has no model version 3 on disk"})
    assert err.value.status_code == 404 and "version 3" in err.value.message
    with pytest.raises(LabelloopError) as other:
        raise_remote({"code": "something_new", "message": "odd"})
    assert other.value.message == "odd"


def held_requests(backend: CeleryJobs, url: str, data: list[str]) -> list[Message]:
    """Messages a predict request of ``data`` puts on the inference queue (nobody answers)."""
    held: list[Message] = []

    def call() -> None:
        with contextlib.suppress(Timeout):
            backend.predict_data(SPEC, 0, data)

    queue = next(q for q in backend.app.conf.task_queues if q.name == "inference")
    with Connection(url) as conn, Consumer(conn, [queue], callbacks=[lambda _b, m: held.append(m)]):
        waiting = threading.Thread(target=call)
        waiting.start()
        while waiting.is_alive():
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.1)
    return held


def test_a_large_predict_request_is_split_for_parallel_workers(
    tmp_path: Path, vhost_url: str
) -> None:
    rt = runtime(tmp_path, vhost_url, predict_timeout_s=0.5, predict_chunk_items=32)
    backend = CeleryJobs(rt)
    backend.start()
    data = [f"text {i}" for i in range(100)]
    held = held_requests(backend, vhost_url, data)
    chunks = [m.payload[0][2] for m in held]
    assert len(chunks) == 3 and all(30 <= len(c) <= 34 for c in chunks)
    assert sorted(x for c in chunks for x in c) == sorted(data)  # every item once
    # Below twice the chunk size, one message.
    assert len(held_requests(backend, vhost_url, data[:63])) == 1
    backend.stop()
    rt.close()
