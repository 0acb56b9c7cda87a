"""The Celery app of the cluster mode: one queue per worker role, and delivery you can trust.

This module is the configuration both sides share (the API publishing jobs,
:mod:`labelloop.jobs.celery_backend`; the workers running them, :mod:`labelloop.jobs.celery_worker`)
and imports neither.

Queues ``data`` (fetch, decode, featurize), ``train`` (fit, evaluate, promote) and ``inference``
(predict, re-predict) are durable quorum queues with a delivery limit: a job survives the loss of a
broker node, and a job that keeps killing its workers is dead-lettered instead of looping forever.
Messages carry ids only. Every stored job runs through :func:`labelloop.loop.executor.execute`,
which re-reads state and is idempotent, so late acknowledgement (a job is acknowledged once it has
run, and requeued if its worker dies) may deliver a job twice without harm.

Synchronous predictions are the seed's inference RPC: ``(task, version, items)`` goes to the
``inference`` queue, any inference worker answers with exactly that version, and the answer comes
back over ``rpc://`` as plain JSON.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer
from kombu.entity import Exchange, Queue

from labelloop.config import Settings
from labelloop.errors import ConfigError

log = logging.getLogger(__name__)

ROLES = ("data", "train", "inference")
EXCHANGE = "labelloop"
DEAD_EXCHANGE = "labelloop.dead"
DEAD_QUEUE = "dead"

#: The Celery task that runs a stored job, by queue: each queue has its own time limits.
JOB_TASKS = {
    "data": "labelloop.data_job",
    "train": "labelloop.train_job",
    "inference": "labelloop.inference_job",
}
PREDICT_DATA = "labelloop.predict_data"
PREDICT_ITEMS = "labelloop.predict_items"
STATUS_COMMAND = "labelloop_status"
#: RabbitMQ's default consumer time-out: a job held longer than this is taken away from its worker.
RABBITMQ_CONSUMER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class RoleDefaults:
    """How a worker of a role runs when its command line says nothing else."""

    concurrency: int
    #: Messages reserved per process: 1 for training, so a queued training job never waits
    #: behind a running one while another train worker is idle.
    prefetch: int
    pool: str


ROLE_DEFAULTS = {
    "train": RoleDefaults(concurrency=1, prefetch=1, pool="prefork"),
    "data": RoleDefaults(concurrency=1, prefetch=1, pool="prefork"),
    # Predict requests are short and independent: one process per core, like Celery's default.
    "inference": RoleDefaults(concurrency=os.cpu_count() or 1, prefetch=1, pool="prefork"),
}


def soft_limit(hard: int) -> int:
    """The soft time limit before a hard one: time for the job to fail cleanly and say why."""
    return max(1, hard - max(5, hard // 10))


def task_queues(settings: Settings) -> list[Queue]:
    """The three role queues (durable; quorum where the broker has them) and the dead letters."""
    exchange = Exchange(EXCHANGE, type="direct", durable=True)  # type: ignore[no-untyped-call]
    args: dict[str, Any] = {"x-dead-letter-exchange": DEAD_EXCHANGE}
    if settings.broker_queue_type == "quorum":
        args |= {"x-queue-type": "quorum", "x-delivery-limit": settings.broker_delivery_limit}
    return [
        Queue(name, exchange, routing_key=name, durable=True, queue_arguments=dict(args))  # type: ignore[no-untyped-call]
        for name in ROLES
    ]


def dead_letter_queue(settings: Settings) -> Queue:
    """Where a message goes after its delivery limit: kept for an operator, never consumed.

    A quorum queue like the role queues (when the broker has them), so dead letters survive the
    loss of the node that held them.
    """
    exchange = Exchange(DEAD_EXCHANGE, type="fanout", durable=True)  # type: ignore[no-untyped-call]
    args: dict[str, Any] = {}
    if settings.broker_queue_type == "quorum":
        args["x-queue-type"] = "quorum"
    return Queue(DEAD_QUEUE, exchange, durable=True, queue_arguments=args)  # type: ignore[no-untyped-call]


class LabelloopConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer without native delayed delivery.

    Celery sets up delayed-delivery exchanges and queues whenever it sees quorum queues; labelloop
    never schedules a task for later, so a worker skips that (and its dozens of broker objects).
    """

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps = [s for s in Consumer.Blueprint.default_steps if "DelayedDelivery" not in s]


def make_app(settings: Settings, *, worker: bool = True, confirm: bool = True) -> Celery:
    """A Celery app for these settings (the API, the CLI and the workers each make their own).

    Workers answer predict requests through the ``rpc://`` result backend (a message to the
    request's reply queue); the API side reads those answers with its own reply listener
    (:class:`labelloop.jobs.celery_backend.ReplyListener`), so it needs no result backend.
    ``confirm`` turns on publisher confirms: every process that publishes jobs has them; predict
    requests and answers, which a time-out covers anyway, go without (a round trip less).
    """
    if not settings.result_backend.startswith("rpc://"):
        raise ConfigError(
            "LABELLOOP_RESULT_BACKEND must be rpc://: predictions come back on the API's reply queue"
        )
    backend = settings.result_backend if worker else "disabled"
    app = Celery("labelloop", broker=settings.broker_url, backend=backend)
    app.conf.update(
        task_queues=task_queues(settings),
        task_default_queue="data",
        task_create_missing_queues=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Late acknowledgement, and requeue when the worker process dies mid-job.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Publisher confirms: a job the broker did not take is an error, not a silent loss.
        broker_transport_options={"confirm_publish": confirm},
        broker_connection_timeout=2.0,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # workers wait for a broker that went away
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        result_persistent=False,
        task_ignore_result=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_pool_limit=50,
        worker_consumer=f"{__name__}:LabelloopConsumer",
    )
    if settings.broker_url.startswith("amqps://"):
        app.conf.broker_use_ssl = broker_tls(settings)
    return app


def broker_tls(settings: Settings) -> dict[str, Any]:
    """TLS to an ``amqps://`` broker: its certificate chain verified by ``LABELLOOP_BROKER_CA``
    (else the system's CAs). Host names are not checked: kombu keeps one TLS setting for every
    failover URL, so use a CA of the cluster's own (docs/DEPLOY.md)."""
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    if settings.broker_ca is not None:
        options["ca_certs"] = str(settings.broker_ca)
    return options


def declare_queues(app: Celery, settings: Settings) -> None:
    """Declare the exchange, the role queues and the dead-letter queue (idempotent).

    A ``dead`` queue declared as a classic queue by an older version keeps working (the broker
    refuses to change a queue's type); the log says how to make it a quorum queue.
    """
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.channel()
        try:
            dead_letter_queue(settings)(channel).declare()  # type: ignore[no-untyped-call]
        except conn.channel_errors as exc:
            log.warning(
                "the dead-letter queue %r exists with other arguments (%s); delete it "
                "(`rabbitmqctl delete_queue %s`, after reading its messages) to make it a %s queue",
                DEAD_QUEUE,
                exc,
                DEAD_QUEUE,
                settings.broker_queue_type,
            )
        finally:
            with contextlib.suppress(*conn.connection_errors, *conn.channel_errors):
                channel.close()
        channel = conn.default_channel
        for queue in app.conf.task_queues:
            queue(channel).declare()
