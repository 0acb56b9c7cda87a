"""The agent: its RPC refuses calls without the cluster token, and ``initial`` on one machine.

The unit tests drive the RPC in-process (no RabbitMQ); the ``cluster`` test runs a real
``labelloop agent`` with its own RabbitMQ node on 127.0.0.2, sends it ``initial`` twice, and checks
the answer's shape, that nothing is duplicated, and that the cookie is in no log file.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from labelloop.cluster.agent import Agent, AgentSettings, check_token
from labelloop.cluster.hosts import read_block
from labelloop.cluster.protocol import (
    AgentStatus,
    InitialAnswer,
    InitialRequest,
    MachineInfo,
    Registration,
    bearer,
    cookie_hash,
)
from labelloop.cluster.rabbit import RabbitNode, epmd_pids
from labelloop.demo import free_port
from labelloop.errors import Unauthorized
from tests import support
from tests.cluster.machines import port_pair

TOKEN = "test-cluster-token-1234"


# -- unit: the token -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN],
)
def test_check_token_refuses(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        check_token(SecretStr(TOKEN), header)


def test_check_token_accepts() -> None:
    check_token(SecretStr(TOKEN), f"Bearer {TOKEN}")
    check_token(SecretStr(TOKEN), f"bearer  {TOKEN}")


@pytest.fixture
def rpc(tmp_path: Path) -> Iterator[tuple[TestClient, Agent]]:
    settings = AgentSettings(
        rabbit_node="ll-unit@localhost", amqp_port=1, rabbit_home=tmp_path / "home",
        hosts_file=tmp_path / "hosts", data_dir=tmp_path / "agent",
    )  # fmt: skip
    agent = Agent(settings, SecretStr(TOKEN))
    cookie = agent.node.ensure_cookie()
    agent.machine = Registration(
        hostname="h", ip="127.0.0.1", port=1, erlang_hash=cookie_hash(cookie),
        rabbit_node=agent.node.name, amqp_port=1, dist_port=2,
    )  # fmt: skip
    with TestClient(agent.app(register=False)) as client:
        yield client, agent


@pytest.mark.parametrize("call", ["info", "cookie", "initial", "status", "stop"])
def test_every_call_but_health_needs_the_token(rpc: tuple[TestClient, Agent], call: str) -> None:
    client, _ = rpc
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {TOKEN}"}):
        resp = client.post(f"/rpc/{call}", headers=headers, json={})
        assert resp.status_code == 401, (call, headers)
        assert "cookie" not in resp.text.lower() or call == "cookie"
    assert client.get("/rpc/health").status_code == 200


def test_token_accepted_and_cookie_only_there(rpc: tuple[TestClient, Agent]) -> None:
    client, agent = rpc
    cookie = agent.node.read_cookie()
    info = client.post("/rpc/info", headers=bearer(TOKEN))
    assert info.status_code == 200
    assert info.json()["erlang_hash"] == cookie_hash(cookie)
    assert cookie not in info.text
    got = client.post("/rpc/cookie", headers=bearer(TOKEN))
    assert got.status_code == 200 and got.json() == {"cookie": cookie}


def test_initial_refuses_a_request_without_this_machine(rpc: tuple[TestClient, Agent]) -> None:
    client, _ = rpc
    other = MachineInfo(
        hostname="x", ip="10.9.9.9", port=5, erlang_hash="", type="train",
        rabbit_node="rabbit@x", amqp_port=1, dist_port=2,
    )  # fmt: skip
    req = InitialRequest(
        machines_info=[other], task_category="image classification",
        task_datastore_path="/nonexistent", erlang_cookie=SecretStr("SECRETCOOKIE"),
    )  # fmt: skip
    resp = client.post("/rpc/initial", headers=bearer(TOKEN), json=req.wire())
    assert resp.status_code == 422
    assert "does not list" in resp.json()["detail"]
    assert "SECRETCOOKIE" not in resp.text


def test_wire_reveals_the_cookie_only_there() -> None:
    req = InitialRequest(
        machines_info=[], task_category="c", task_datastore_path="/d",
        erlang_cookie=SecretStr("SECRETCOOKIE"),
    )  # fmt: skip
    assert "SECRETCOOKIE" not in repr(req) and "SECRETCOOKIE" not in req.model_dump_json()
    assert req.wire()["erlang_cookie"] == "SECRETCOOKIE"


# -- for real: one machine, its own RabbitMQ node ----------------------------------------------


def wait_until(cond: Any, timeout: float, what: str) -> None:
    support.wait_until(cond, timeout, what, poll=0.5, ignore=(httpx.HTTPError, OSError))


@pytest.mark.cluster
def test_initial_on_one_machine(tmp_path: Path) -> None:
    ip = "127.0.0.2"
    port, amqp, api_port = free_port(ip), port_pair(ip)[0], free_port(ip)
    node_name = f"ll-agent-{os.getpid()}@localhost"
    home, logs, hosts = tmp_path / "rabbit-home", tmp_path / "logs", tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n")
    agent_log = tmp_path / "agent.log"
    broker_password = secrets.token_hex(16)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")},
        # production, as the guide runs it: real secrets, the broker's own user
        "LABELLOOP_ENVIRONMENT": "production",
        "LABELLOOP_CLUSTER_TOKEN": TOKEN,
        "LABELLOOP_AGENT_BROKER_USER": "labelloop",
        "LABELLOOP_AGENT_BROKER_PASSWORD": broker_password,
        "LABELLOOP_LOG_LEVEL": "DEBUG",  # the most the agent ever logs
        "LABELLOOP_AGENT_STOP_RABBIT_ON_EXIT": "true",
        "LABELLOOP_AGENT_WORKER_CONCURRENCY": "1",
    }
    argv = [
        sys.executable, "-m", "labelloop", "agent", "--advertise-ip", ip, "--port", str(port),
        "--rabbit-node", node_name, "--amqp-port", str(amqp), "--rabbit-home", str(home),
        "--hosts-file", str(hosts), "--data-dir", str(tmp_path / "agent"), "--log-dir", str(logs),
    ]  # fmt: skip
    epmd_before = epmd_pids()
    base = f"http://{ip}:{port}/rpc"
    with open(agent_log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: httpx.get(f"{base}/health").status_code == 200, 180, "the agent")
        assert httpx.post(f"{base}/info").status_code == 401
        me = Registration.model_validate(httpx.post(f"{base}/info", headers=bearer(TOKEN)).json())
        assert (me.ip, me.port, me.rabbit_node, me.amqp_port) == (ip, port, node_name, amqp)
        cookie = httpx.post(f"{base}/cookie", headers=bearer(TOKEN)).json()["cookie"]
        assert me.erlang_hash == cookie_hash(cookie)

        machine = MachineInfo(**me.model_dump(), type="inference")
        req = InitialRequest(
            machines_info=[machine], task_category="image classification",
            task_extra_info="multi-class", task_datastore_path=str(tmp_path / "datastore"),
            erlang_cookie=SecretStr(cookie), api_port=api_port,
        )  # fmt: skip
        assert httpx.post(f"{base}/initial", json=req.wire()).status_code == 401
        raw = httpx.post(f"{base}/initial", json=req.wire(), headers=bearer(TOKEN), timeout=120)
        assert raw.status_code == 200, raw.text
        body = raw.json()
        seed_keys = {"rpc", "bad_machines_info", "good_machines_info", "master_train",
                     "master_inference", "erlang_hash"}  # fmt: skip
        assert seed_keys <= set(body)
        answer = InitialAnswer.model_validate(body)
        assert answer.rpc == f"http://{ip}:{api_port}"
        assert answer.good_machines_info == [machine] and answer.bad_machines_info == []
        assert (answer.master_train, answer.master_inference) == ("", ip)
        assert answer.erlang_hash == cookie_hash(cookie)
        assert answer.workers == [f"inference-127-0-0-2@{me.hostname}"]
        assert answer.rabbit_cluster == [node_name]
        assert answer.probe in ("icmp", "tcp")
        assert read_block(hosts) == [(ip, me.hostname)]
        hosts_after_first = hosts.read_text()

        def status() -> AgentStatus:
            resp = httpx.post(f"{base}/status", headers=bearer(TOKEN), timeout=30)
            return AgentStatus.model_validate(resp.json())

        first = status()
        assert first.role == "inference" and first.masters == {"inference": ip}
        pids = {w.name: w.pid for w in first.workers}
        assert set(pids) == {answer.workers[0], "service"}
        assert all(w.alive for w in first.workers)

        # the worker connects to its local node and serves; the predict service answers
        worker_log = logs / "inference-127-0-0-2.log"
        wait_until(lambda: "ready" in worker_log.read_text(), 180, "the worker to be ready")
        wait_until(lambda: httpx.get(f"{answer.rpc}/ui/").status_code == 200, 120, "the service")

        # a second initial changes nothing: same answer, same processes, same hosts file
        again = httpx.post(f"{base}/initial", json=req.wire(), headers=bearer(TOKEN), timeout=120)
        assert InitialAnswer.model_validate(again.json()) == answer
        second = status()
        assert {w.name: w.pid for w in second.workers} == pids
        assert all(w.restarts == 0 for w in second.workers)
        assert hosts.read_text() == hosts_after_first

        # production children: up, never restarted (they got the secrets they need, no more)
        third = status()
        assert all(w.alive and w.restarts == 0 and w.last_exit_code is None for w in third.workers)
        assert third.rabbit_running and third.cluster_node == node_name and not third.stopped
        for w in third.workers:
            assert "development default" not in Path(w.log_file).read_text()

        stopped = httpx.post(f"{base}/stop", headers=bearer(TOKEN), timeout=120).json()
        assert stopped["rabbit_stopped"] is True and stopped["hosts_block_removed"] is True
        assert sorted(stopped["stopped"]) == sorted(pids)
        assert hosts.read_text() == "127.0.0.1\tlocalhost\n"  # the host as it was found
        assert status().stopped
        for pid in pids.values():
            assert pid is not None
            wait_until(lambda p=pid: not _alive(p), 20, f"process {pid} to end")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        leftover = RabbitNode(node_name, amqp, amqp + 20000, home, home / "rabbitmq")
        if leftover.is_running():
            leftover.stop()
        for pid in epmd_pids() - epmd_before:
            os.kill(pid, signal.SIGTERM)

    # the cookie is in no log file: the agent's, the workers', the service's, RabbitMQ's
    log_files = [agent_log, *logs.rglob("*.log"), *(home / "rabbitmq").rglob("*.log")]
    assert len(log_files) >= 3
    for path in log_files:
        text = path.read_text(errors="replace")
        assert cookie not in text and broker_password not in text, path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


def test_serve_processes_needs_celery_off_linux(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from labelloop.cli import app
    from labelloop.jobs import forward

    monkeypatch.setattr(forward, "supported", lambda: False)

    result = CliRunner().invoke(
        app, ["serve", "--processes", "2", "--data-dir", str(tmp_path), "--jobs", "local"]
    )
    assert result.exit_code == 2
    assert "--processes above 1 needs --jobs celery" in result.output


def test_start_sh_needs_token_and_registry_and_runs_the_agent() -> None:
    script = Path(__file__).resolve().parents[2] / "deploy" / "start.sh"
    base = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    base["LABELLOOP_BIN"] = str(Path(sys.executable).parent / "labelloop")
    run = [str(script), "--help"]
    missing = subprocess.run(run, env=base, capture_output=True, text=True, check=False)
    assert missing.returncode != 0 and "LABELLOOP_CLUSTER_TOKEN" in missing.stderr
    env = {**base, "LABELLOOP_CLUSTER_TOKEN": TOKEN}
    missing = subprocess.run(run, env=env, capture_output=True, text=True, check=False)
    assert missing.returncode != 0 and "LABELLOOP_AGENT_REGISTRY" in missing.stderr
    env["LABELLOOP_AGENT_REGISTRY"] = "http://127.0.0.1:1"
    ok = subprocess.run(run, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert ok.returncode == 0 and "--registry" in ok.stdout
    assert TOKEN not in ok.stdout + ok.stderr


def test_start_sh_finds_labelloop_in_the_checkout(tmp_path: Path) -> None:
    """Without LABELLOOP_BIN and with no `labelloop` on PATH, start.sh runs the one `make
    install` puts in the checkout's .venv; with none there, it says how to install it."""
    checkout = tmp_path / "checkout"
    (checkout / "deploy").mkdir(parents=True)
    script = checkout / "deploy" / "start.sh"
    script.write_bytes((Path(__file__).resolve().parents[2] / "deploy" / "start.sh").read_bytes())
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    env |= {"PATH": "/usr/bin:/bin", "LABELLOOP_CLUSTER_TOKEN_FILE": str(tmp_path / "token"),
            "LABELLOOP_AGENT_REGISTRY": "http://127.0.0.1:1"}  # fmt: skip
    missing = subprocess.run([str(script), "--help"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "make install" in missing.stderr
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "labelloop").symlink_to(Path(sys.executable).parent / "labelloop")
    ok = subprocess.run(
        [str(script), "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and "--registry" in ok.stdout, ok.stderr


# -- unit: initial's decisions, with a fake node and a fake supervisor -------------------------


class FakeNode(RabbitNode):
    """A node that records what the agent asks of it."""

    joined: list[tuple[str, str]]

    def is_running(self) -> bool:
        return True

    def running_nodes(self) -> list[str]:
        return [self.name]

    def join(
        self,
        master: str,
        cookie: str,
        timeout_s: float = 90.0,
        *,
        allow_reset: bool = False,
        members: list[str] | None = None,
    ) -> bool:
        self.joined.append((master, cookie))
        return True


class FakeSupervisor:
    def __init__(self) -> None:
        self.specs: dict[str, Any] = {}
        self.starts = 0

    def ensure(self, spec: Any) -> bool:
        if self.specs.get(spec.name) == spec:
            return False
        self.specs[spec.name] = spec
        self.starts += 1
        return True

    def names(self) -> list[str]:
        return list(self.specs)

    def stop(self, name: str) -> None:
        self.specs.pop(name, None)

    def status(self) -> list[Any]:
        return []

    def stop_all(self) -> None:
        self.specs.clear()


def fake_agent(tmp_path: Path, ip: str, port: int) -> tuple[Agent, FakeSupervisor, FakeNode]:
    settings = AgentSettings(
        rabbit_node=f"n{ip}@localhost", amqp_port=5999, rabbit_home=tmp_path / "home",
        hosts_file=tmp_path / "hosts", data_dir=tmp_path / "agent", api_port=8123,
    )  # fmt: skip
    agent = Agent(settings, SecretStr(TOKEN))
    node = FakeNode(settings.node_name, 5999, 25999, tmp_path / "home")
    node.joined = []
    node.ensure_cookie()
    agent.node = node
    sup = FakeSupervisor()
    agent.supervisor = sup  # type: ignore[assignment]
    agent.machine = Registration(
        hostname="me", ip=ip, port=port, erlang_hash="", rabbit_node=node.name,
        amqp_port=5999, dist_port=25999,
    )  # fmt: skip
    return agent, sup, node


def test_initial_decisions_on_a_train_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelloop.cluster import agent as agent_mod
    from labelloop.cluster.probe import ProbeResult

    monkeypatch.setenv("LABELLOOP_CLUSTER_TOKEN", TOKEN)
    agent, sup, node = fake_agent(tmp_path, "10.0.0.10", 7000)

    def m(ip: str, role: str, port: int = 7000) -> MachineInfo:
        return MachineInfo(
            hostname=f"h{ip}", ip=ip, port=port, erlang_hash="", type=role,  # type: ignore[arg-type]
            rabbit_node=f"rabbit@h{ip}", amqp_port=5672, dist_port=25672,
        )  # fmt: skip

    me, t9 = m("10.0.0.10", "train"), m("10.0.0.9", "train")
    i3, i2, down = (
        m("10.0.0.30", "inference"),
        m("10.0.0.20", "inference"),
        m("10.0.0.5", "inference"),
    )
    machines = [me, t9, i3, i2, down]
    monkeypatch.setattr(
        agent_mod,
        "probe_machines",
        lambda ms, **_: ProbeResult([x for x in ms if x is not down], [down], "tcp"),
    )
    req = InitialRequest(
        machines_info=machines, task_category="c", task_datastore_path=str(tmp_path / "ds"),
        erlang_cookie=SecretStr("CLUSTERCOOKIE"), database_url="postgresql://db/x",
    )  # fmt: skip
    answer = agent.initial(req)
    # ii) masters by address: 10.0.0.9 over 10.0.0.10, 10.0.0.20 over 10.0.0.30; .5 is bad
    assert (answer.master_train, answer.master_inference) == ("10.0.0.9", "10.0.0.20")
    assert answer.bad_machines_info == [down] and down not in answer.good_machines_info
    # iii) a train machine's node joins the inference master's cluster, with the request's cookie
    assert node.joined == [("rabbit@h10.0.0.20", "CLUSTERCOOKIE")]
    # iv) a data and a train worker; not the train master, so no service (vi)
    assert answer.workers == ["data-10-0-0-10@h10.0.0.10", "train-10-0-0-10@h10.0.0.10"]
    assert set(sup.specs) == set(answer.workers) and answer.rpc == ""
    env = dict(sup.specs[answer.workers[0]].env)
    assert env["LABELLOOP_BROKER_URL"].split(";") == [
        "amqp://guest:guest@127.0.0.1:5999//",
        "amqp://guest:guest@10.0.0.20:5672//",
        "amqp://guest:guest@10.0.0.9:5672//",
    ]
    assert env["LABELLOOP_DATABASE_URL"] == "postgresql://db/x"
    assert env["LABELLOOP_DATA_DIR"] == str((tmp_path / "ds").resolve())
    assert "LABELLOOP_CLUSTER_TOKEN" not in env
    assert not any("CLUSTERCOOKIE" in v for v in env.values())
    assert read_block(tmp_path / "hosts") == [(x.ip, x.hostname) for x in (me, t9, i3, i2)]
    # a second initial starts nothing
    starts = sup.starts
    assert agent.initial(req) == answer
    assert sup.starts == starts


def test_inference_service_processes_follow_good_inference_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelloop.cluster import agent as agent_mod
    from labelloop.cluster.probe import ProbeResult

    agent, sup, node = fake_agent(tmp_path, "10.0.0.20", 7000)
    machines = [
        MachineInfo(
            hostname=f"h{i}", ip=f"10.0.0.{i}", port=7000, erlang_hash="", type="inference",
            rabbit_node=f"rabbit@h{i}", amqp_port=5672, dist_port=25672,
        )
        for i in (20, 21, 22)
    ]  # fmt: skip
    monkeypatch.setattr(
        agent_mod, "probe_machines", lambda ms, **_: ProbeResult(list(ms), [], "tcp")
    )
    req = InitialRequest(
        machines_info=machines, task_category="c", task_datastore_path=str(tmp_path / "ds")
    )
    answer = agent.initial(req)
    assert node.joined == []  # the inference master itself joins nobody
    assert answer.rpc == "http://10.0.0.20:8123"
    service = sup.specs["service"]
    assert service.argv[-2:] == ("--processes", "3")
    assert service.argv[service.argv.index("--host") :][:2] == ("--host", "10.0.0.20")


def test_agent_metrics_show_its_processes(rpc: tuple[TestClient, Agent], tmp_path: Path) -> None:
    from labelloop.cluster.supervisor import ProcessSpec

    client, agent = rpc
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    agent.supervisor.ensure(
        ProcessSpec.make("w1", "inference", sleeper, dict(os.environ), tmp_path / "w1.log")
    )
    text = client.get("/metrics").text  # no token: Prometheus scrapes it
    assert 'labelloop_agent_child_up{child="w1",role="inference"} 1.0' in text
    assert 'labelloop_agent_child_restarts_total{child="w1",role="inference"} 0.0' in text
    assert "labelloop_agent_child_uptime_seconds" in text


def test_a_failed_join_is_retried_then_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join that fails for a moment is tried again; one that keeps failing fails initial, and
    the status says so (a machine is good only when its node is a member and initial ran)."""
    from labelloop.cluster import agent as agent_mod
    from labelloop.cluster.health import machine_state
    from labelloop.cluster.probe import ProbeResult
    from labelloop.errors import Unavailable

    monkeypatch.setattr(agent_mod, "JOIN_RETRY_S", 0.0)
    agent, _, node = fake_agent(tmp_path, "10.0.0.21", 7000)
    failures = ["cannot_start_mnesia", "eaddrinuse"]

    def flaky_join(master: str, cookie: str, timeout_s: float = 90.0, **_: Any) -> bool:
        if failures:
            raise Unavailable(f"rabbitmqctl reset on {node.name} failed: {failures.pop(0)}")
        node.joined.append((master, cookie))
        return True

    node.join = flaky_join  # type: ignore[method-assign]
    machines = [
        MachineInfo(
            hostname=f"h{i}", ip=f"10.0.0.{i}", port=7000, erlang_hash="", type="inference",
            rabbit_node=f"rabbit@h{i}", amqp_port=5672, dist_port=25672,
        )
        for i in (20, 21)
    ]  # fmt: skip
    monkeypatch.setattr(
        agent_mod, "probe_machines", lambda ms, **_: ProbeResult(list(ms), [], "tcp")
    )
    req = InitialRequest(
        machines_info=machines, task_category="c", task_datastore_path=str(tmp_path / "ds"),
        erlang_cookie=SecretStr("C"),
    )  # fmt: skip
    agent.initial(req)  # two failures, then the third try joins
    assert node.joined == [("rabbit@h20", "C")] and agent.initial_error is None

    failures.extend(["cannot_start_mnesia"] * 3)
    node.running_nodes = lambda: [node.name]  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="cannot_start_mnesia"):
        agent.initial(req)
    status = agent.status()
    assert status.initial_error is not None and "cannot_start_mnesia" in status.initial_error
    state, problems = machine_state("inference", status, "rabbit@h20")
    assert state == "failing"
    assert problems[0].startswith("initial failed") and "not a running member" in problems[1]


def test_a_late_machine_with_the_smallest_address_joins_the_running_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elected inference master by address, but the cluster already runs on another node: it
    joins that node (the coordinator names it) instead of staying a cluster of its own."""
    from labelloop.cluster import agent as agent_mod
    from labelloop.cluster.probe import ProbeResult

    agent, _, node = fake_agent(tmp_path, "10.0.0.5", 7000)
    machines = [
        MachineInfo(
            hostname=f"h{i}", ip=f"10.0.0.{i}", port=7000, erlang_hash="", type="inference",
            rabbit_node=node.name if i == 5 else f"rabbit@h{i}", amqp_port=5672, dist_port=25672,
        )
        for i in (5, 20)
    ]  # fmt: skip
    monkeypatch.setattr(
        agent_mod, "probe_machines", lambda ms, **_: ProbeResult(list(ms), [], "tcp")
    )
    req = InitialRequest(
        machines_info=machines, task_category="c", task_datastore_path=str(tmp_path / "ds"),
        erlang_cookie=SecretStr("C"), cluster_node="rabbit@h20",
    )  # fmt: skip
    answer = agent.initial(req)
    assert answer.master_inference == "10.0.0.5"  # the seed's rule, unchanged
    assert node.joined == [("rabbit@h20", "C")]  # but its node joined the running cluster
    assert agent.status().cluster_node == "rabbit@h20"


def test_the_broker_user_is_made_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labelloop.cluster import agent as agent_mod
    from labelloop.cluster.probe import ProbeResult

    agent, _, node = fake_agent(tmp_path, "10.0.0.20", 7000)
    agent.settings = agent.settings.model_copy(
        update={"broker_user": "labelloop", "broker_password": SecretStr("pw")}
    )
    made: list[tuple[str, str]] = []
    node.ensure_user = lambda user, password: made.append((user, password))  # type: ignore[method-assign]
    me = MachineInfo(
        hostname="h", ip="10.0.0.20", port=7000, erlang_hash="", type="inference",
        rabbit_node=node.name, amqp_port=5999, dist_port=25999,
    )  # fmt: skip
    monkeypatch.setattr(
        agent_mod, "probe_machines", lambda ms, **_: ProbeResult(list(ms), [], "tcp")
    )
    req = InitialRequest(machines_info=[me], task_category="c", task_datastore_path=str(tmp_path))
    agent.initial(req)
    agent.initial(req.model_copy(update={"refresh": True}))
    assert made == [("labelloop", "pw")]  # the master's node, once


def test_processes_start_before_the_join_and_wait_at_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers and the service start while the node joins (they import their code then);
    the gate they wait at opens only once the node is in the cluster. A first join that fails
    stops them, and the gate stays closed."""
    from labelloop.cluster import agent as agent_mod
    from labelloop.cluster.gate import GATE_ENV
    from labelloop.cluster.probe import ProbeResult
    from labelloop.errors import Unavailable

    monkeypatch.setattr(agent_mod, "JOIN_RETRY_S", 0.0)
    agent, sup, node = fake_agent(tmp_path, "10.0.0.21", 7000)
    seen: list[tuple[list[str], bool]] = []
    fail = [True]

    def join(master: str, cookie: str, timeout_s: float = 90.0, **_: Any) -> bool:
        seen.append((sorted(sup.specs), agent.gate.exists()))
        if fail[0]:
            raise Unavailable("rabbitmqctl eval failed: cannot_start_mnesia")
        return True

    node.join = join  # type: ignore[method-assign]
    machines = [
        MachineInfo(
            hostname=f"h{i}", ip=f"10.0.0.{i}", port=7000, erlang_hash="", type="inference",
            rabbit_node=f"rabbit@h{i}", amqp_port=5672, dist_port=25672,
        )
        for i in (20, 21)
    ]  # fmt: skip
    monkeypatch.setattr(
        agent_mod, "probe_machines", lambda ms, **_: ProbeResult(list(ms), [], "tcp")
    )
    req = InitialRequest(
        machines_info=machines, task_category="c", task_datastore_path=str(tmp_path / "ds"),
        erlang_cookie=SecretStr("C"),
    )  # fmt: skip
    with pytest.raises(Unavailable):
        agent.initial(req)
    started = ["inference-10-0-0-21@h21", "service"]
    assert seen[0] == (started, False)  # started before the join, the gate closed
    assert sup.specs == {} and not agent.gate.exists()  # failed: stopped, still closed

    fail[0], seen[:] = False, []
    answer = agent.initial(req)
    assert seen == [(started, False)] and agent.gate.exists()
    assert all(dict(s.env)[GATE_ENV] == str(agent.gate.resolve()) for s in sup.specs.values())
    assert answer.workers == started[:1] and answer.rpc == "http://10.0.0.21:8123"
    agent.stop(rabbit=False)
    assert not agent.gate.exists()


def test_a_status_without_the_node_makes_no_rabbitmqctl_call(tmp_path: Path) -> None:
    """What the coordinator polls while processes settle: the processes, not the node's members
    (each rabbitmqctl call starts an Erlang VM)."""
    agent, _, node = fake_agent(tmp_path, "10.0.0.21", 7000)

    def no_call() -> list[str]:
        raise AssertionError("rabbitmqctl called")

    node.running_nodes = no_call  # type: ignore[method-assign]
    status = agent.status(rabbit=False)
    assert status.rabbit_cluster == [] and status.workers == []
