"""Real RabbitMQ nodes started by the test: the seed's join step and a quorum queue across nodes.

Never touches the machine's own RabbitMQ (127.0.0.1:5672): both nodes have their own names, ports,
HOME and data folders under tmp, and are stopped at the end (with the epmd they caused to start).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue
from kombu.message import Message
from pydantic import SecretStr

from labelloop.cluster.agent import Agent, AgentSettings
from labelloop.cluster.protocol import InitialRequest
from labelloop.cluster.rabbit import RabbitNode, epmd_pids
from labelloop.config import load_settings
from labelloop.errors import ConfigError
from tests.cluster.machines import make_certs, port_pair
from tests.support import wait_until

pytestmark = pytest.mark.cluster


def members(node: RabbitNode, queue: str) -> list[str]:
    out = node.ctl("list_queues", "name", "members", "--formatter", "json")
    rows = json.loads(out[out.find("[") :])
    return sorted(m for row in rows if row["name"] == queue for m in row["members"])


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[RabbitNode, RabbitNode]]:
    epmd_before = epmd_pids()
    made = []
    for name in ("a", "b"):
        port = port_pair("127.0.0.1")[0]
        home = tmp_path / name
        made.append(
            RabbitNode(
                name=f"ll-test-{name}-{os.getpid()}@localhost",
                amqp_port=port,
                dist_port=port + 20000,
                home=home,
                base=home / "rabbitmq",
                marker=tmp_path / f"{name}-started",
            )
        )
    try:
        yield made[0], made[1]
    finally:
        for node in made:
            node.stop()
        for pid in epmd_pids() - epmd_before:
            os.kill(pid, signal.SIGTERM)


def test_two_nodes_join_and_share_a_quorum_queue(nodes: tuple[RabbitNode, RabbitNode]) -> None:
    a, b = nodes
    assert a.start() and b.start()
    assert a.started_by_us and not a.start()  # found running the second time
    for node in (a, b):
        assert stat.S_IMODE(node.cookie_file.stat().st_mode) == 0o600
    assert a.read_cookie() != b.read_cookie()

    # a quorum queue, declared (with a message) while a is alone: it lives on a only
    exchange = Exchange("ll-test", type="direct", durable=True)
    queue = Queue(
        "ll-test-q", exchange, routing_key="q", durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )  # fmt: skip
    with Connection(f"amqp://guest:guest@127.0.0.1:{a.amqp_port}//") as conn:
        producer = conn.Producer()
        producer.publish(
            {"job": 42}, exchange=exchange, routing_key="q", declare=[queue], serializer="json"
        )
    assert members(a, "ll-test-q") == [a.name]

    # a running node the agent did not start (the machine's own, say) is never reset or joined
    stranger = RabbitNode(b.name, b.amqp_port, b.dist_port, b.home, b.base)
    assert not stranger.start() and not stranger.started_by_us
    with pytest.raises(ConfigError, match="not started by labelloop"):
        stranger.join(a.name, a.read_cookie())
    assert b.running_nodes() == [b.name] and b.read_cookie() != a.read_cookie()  # untouched
    # an agent that restarts knows the node it started (its marker file)
    again = RabbitNode(b.name, b.amqp_port, b.dist_port, b.home, b.base, marker=b.marker)
    assert not again.start() and again.started_by_us

    # the seed's step iii: b takes a's cookie, then stop_app, reset, join_cluster, start_app;
    # the running node takes the cookie without a restart (same OS process before and after)
    b_pid = b.pid()
    assert b_pid is not None
    assert b.join(a.name, a.read_cookie())
    assert b.pid() == b_pid
    assert not (b.home / ".erlang.cookie.next").exists()
    assert b.read_cookie() == a.read_cookie()
    assert stat.S_IMODE(b.cookie_file.stat().st_mode) == 0o600
    assert a.running_nodes() == sorted([a.name, b.name])
    assert b.running_nodes() == sorted([a.name, b.name])
    assert not b.join(a.name, a.read_cookie())  # already a member: nothing happens
    # the queue declared before the join gets a replica on b (rabbitmq-queues grow)
    wait_until(
        lambda: members(a, "ll-test-q") == sorted([a.name, b.name]), 60, "a replica on b", poll=1
    )

    got: list[object] = []

    def on_message(body: object, message: Message) -> None:
        got.append(body)
        message.ack()

    # a user of our own (production: guest works over loopback only), created through a, used on b
    a.ensure_user("ll-user", "s3cret pw")
    a.ensure_user("ll-user", "s3cret pw")  # again: the password is set, nothing breaks
    with Connection(f"amqp://ll-user:s3cret%20pw@127.0.0.1:{b.amqp_port}//") as conn:
        consumer = conn.Consumer(queue, callbacks=[on_message])
        with consumer:
            conn.drain_events(timeout=10)
    assert got == [{"job": 42}]

    # `cluster leave`: b leaves (a node of its own again); a forgets a member that is gone
    b.leave()
    assert b.running_nodes() == [b.name] and a.running_nodes() == [a.name]
    assert b.join(a.name, a.read_cookie())
    b.stop()
    assert a.forget(b.name) and not a.forget(b.name)
    assert a.cluster_status()["disk_nodes"] == [a.name]


def test_cookie_never_in_error_text(tmp_path: Path) -> None:
    node = RabbitNode(
        name="ll-nobody@localhost", amqp_port=port_pair("127.0.0.1")[0], home=tmp_path
    )
    cookie = node.ensure_cookie()
    assert stat.S_IMODE(node.cookie_file.stat().st_mode) == 0o600
    assert node._scrub(f"bad cookie {cookie} here") == "bad cookie <cookie> here"
    assert not node.is_running()


@pytest.mark.parametrize(
    "bad", ["x'), os:cmd(\"id\"), ('", "no-host", "a@b c", "a@b\nc", "@localhost"]
)
def test_node_names_that_are_not_names_are_refused(bad: str) -> None:
    """A node name reaches rabbitmqctl and an Erlang ``eval``: only ``name@host`` passes."""
    from pydantic import ValidationError

    from labelloop.cluster.protocol import Registration
    from labelloop.errors import InvalidInput

    with pytest.raises(ValidationError):
        Registration(
            hostname="h", ip="127.0.0.2", port=1, erlang_hash="0", rabbit_node=bad,
            amqp_port=1, dist_port=2,
        )  # fmt: skip
    node = RabbitNode(name="ll-nobody@localhost", amqp_port=1)
    with pytest.raises(InvalidInput):
        node._join_in_one_call(bad, timeout_s=1)


def test_a_node_started_with_broker_tls_serves_amqps(tmp_path: Path) -> None:
    """``--broker-tls``: the node the agent starts listens with TLS only, and the URL the agent
    gives its workers (``amqps://`` with the CA) works with kombu and with labelloop's Celery app."""
    from labelloop.jobs.celery_app import make_app

    certs = make_certs(tmp_path / "certs")
    port = port_pair("127.0.0.1")[0]
    settings = AgentSettings(
        rabbit_node=f"ll-tls-{os.getpid()}@localhost", amqp_port=port,
        rabbit_home=tmp_path / "home", data_dir=tmp_path / "agent", broker_tls=True,
        tls_cert=certs["cert"], tls_key=certs["key"], tls_ca=certs["ca"],
    )  # fmt: skip
    agent = Agent(settings, SecretStr("t" * 20))
    epmd_before = epmd_pids()
    try:
        assert agent.node.start()
        conf = (tmp_path / "home" / "rabbitmq" / "rabbitmq.conf").read_text()
        assert f"listeners.ssl.default = {port}" in conf and "listeners.tcp = none" in conf
        url = agent._broker_url("127.0.0.1", port)
        assert url == f"amqps://guest:guest@127.0.0.1:{port}//"
        tls = {"ca_certs": str(certs["ca"]), "cert_reqs": ssl.CERT_REQUIRED}
        with Connection(url, ssl=tls) as conn:
            conn.ensure_connection(max_retries=2)
            queue = Queue("ll-tls-q", durable=False, auto_delete=True)
            conn.Producer().publish({"tls": True}, routing_key="ll-tls-q", declare=[queue])
            message = queue(conn.channel()).get(no_ack=True)
            assert message is not None and message.payload == {"tls": True}
        plain = Connection(f"amqp://guest:guest@127.0.0.1:{port}//", connect_timeout=5)
        with pytest.raises(Exception), plain:
            plain.ensure_connection(max_retries=1)
        # the workers' settings: the URL and LABELLOOP_BROKER_CA, as the agent gives them
        env = agent._child_env(
            InitialRequest(machines_info=[], task_category="c", task_datastore_path=str(tmp_path)),
            [],
        )
        assert env["LABELLOOP_BROKER_URL"] == url
        assert env["LABELLOOP_BROKER_CA"] == str(certs["ca"].resolve())
        settings_ = load_settings(broker_url=url, broker_ca=env["LABELLOOP_BROKER_CA"])
        with make_app(settings_, worker=False).connection_for_write() as conn:
            conn.ensure_connection(max_retries=2)
        untrusted = make_app(load_settings(broker_url=url), worker=False)  # system CAs only
        with pytest.raises(Exception), untrusted.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    finally:
        agent.node.stop()
        for pid in epmd_pids() - epmd_before:
            os.kill(pid, signal.SIGTERM)
