"""The coordinator against fake agents: real HTTP on loopback addresses, no RabbitMQ.

Each fake agent is a small FastAPI app on its own 127.0.0.x address that checks the token, hands
out its cookie, and answers ``initial`` the way the seed says (TCP probe, smallest address elected).
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Header, HTTPException
from pydantic import SecretStr
from typer.testing import CliRunner

from labelloop import cli
from labelloop.cli import app as cli_app
from labelloop.client import Client
from labelloop.cluster.client import AgentClient, CoordinatorClient
from labelloop.cluster.coordinator import (
    STATE_FILE,
    Coordinator,
    InitRequest,
    JoinRequest,
    create_app,
)
from labelloop.cluster.election import masters
from labelloop.cluster.probe import probe_machines
from labelloop.cluster.protocol import (
    AgentStatus,
    InitialAnswer,
    InitialRequest,
    RabbitStatus,
    Registration,
    WorkerStatus,
    cookie_hash,
)
from labelloop.demo import free_port
from labelloop.errors import Conflict, InvalidInput, NotFound, Unauthorized, Unavailable
from tests.cluster.machines import serve_app

TOKEN = "test-cluster-token-0123456789"
COOKIE = "SECRETCOOKIEABCDEFGH"
TASK = {"task_category": "image-classification", "task_datastore_path": "/data/task-1"}


class FakeAgent:
    """An agent that does the seed's ``initial`` bookkeeping and records what it was sent."""

    def __init__(self, ip: str, cookie: str = COOKIE) -> None:
        self.ip = ip
        self.cookie = cookie
        self.requests: list[dict[str, Any]] = []
        self.cookie_calls = 0
        self.stopped = 0
        self.answer: InitialAnswer | None = None
        self.registration: Registration | None = None
        self.service: str | None = None  # the role service's URL to answer with, if any
        self.workers: list[WorkerStatus] = []  # the supervised processes its status shows
        self.status_rabbit: list[bool] = []  # each status call: whether it asked for the node
        self.is_stopped = False
        self.left = 0
        self.forgotten: list[str] = []
        self.app = FastAPI()

        def auth(authorization: str | None) -> None:
            if authorization != f"Bearer {TOKEN}":
                raise HTTPException(401, "token")

        @self.app.get("/rpc/health")
        def health() -> dict[str, str]:
            return {"status": "ok"}

        @self.app.post("/rpc/cookie")
        def cookie_(authorization: str | None = Header(None)) -> dict[str, str]:
            auth(authorization)
            self.cookie_calls += 1
            return {"cookie": self.cookie}

        @self.app.post("/rpc/initial")
        def initial(body: dict[str, Any], authorization: str | None = Header(None)) -> Any:
            auth(authorization)
            self.requests.append(body)
            req = InitialRequest.model_validate(body)
            if req.erlang_cookie is not None:
                self.cookie = req.erlang_cookie.get_secret_value()
            probe = probe_machines(req.machines_info, timeout_s=0.5, use_icmp=False)
            train, inference = masters(probe.good)
            me = next(m for m in req.machines_info if m.ip == self.ip)
            self.answer = InitialAnswer(
                rpc=self.service or f"http://{self.ip}:9/{me.type}",
                bad_machines_info=probe.bad,
                good_machines_info=probe.good,
                master_train=train.ip if train else "",
                master_inference=inference.ip if inference else "",
                erlang_hash=cookie_hash(self.cookie),
                workers=[f"{me.type}-{self.ip}@h"],
                rabbit_cluster=[f"n-{m.ip}@localhost" for m in probe.good],
                probe=probe.method,
            )
            return self.answer.model_dump(mode="json")

        @self.app.post("/rpc/status")
        def status(authorization: str | None = Header(None), rabbit: bool = True) -> Any:
            auth(authorization)
            self.status_rabbit.append(rabbit)
            assert self.registration is not None
            a = self.answer
            return AgentStatus(
                machine=self.registration,
                role=next((m.type for m in a.good_machines_info if m.ip == self.ip), None)
                if a
                else None,
                good=[m.ip for m in a.good_machines_info] if a else [],
                bad=[m.ip for m in a.bad_machines_info] if a else [],
                masters={"train": a.master_train, "inference": a.master_inference} if a else {},
                rabbit_cluster=a.rabbit_cluster if a else [],
                service=a.rpc if a else None,
                workers=self.workers,
                stopped=self.is_stopped,
            ).model_dump(mode="json")

        @self.app.post("/rpc/stop")
        def stop(authorization: str | None = Header(None)) -> dict[str, Any]:
            auth(authorization)
            self.stopped += 1
            self.is_stopped = True
            return {"stopped": True}

        @self.app.post("/rpc/leave")
        def leave(authorization: str | None = Header(None)) -> dict[str, Any]:
            auth(authorization)
            self.left += 1
            return {"stopped": ["w"], "left_rabbit_cluster": True, "hosts_block_removed": True}

        @self.app.post("/rpc/forget")
        def forget(body: dict[str, Any], authorization: str | None = Header(None)) -> Any:
            auth(authorization)
            self.forgotten.append(body["node"])
            return {"node": body["node"], "forgotten": True}

        @self.app.post("/rpc/rabbit")
        def rabbit(authorization: str | None = Header(None)) -> Any:
            auth(authorization)
            a = self.answer
            return RabbitStatus(
                node=f"n-{self.ip}@localhost",
                running_nodes=a.rabbit_cluster if a else [],
                disk_nodes=a.rabbit_cluster if a else [],
                queues=[{"name": "train", "type": "quorum", "messages": 0, "consumers": 1,
                         "members": a.rabbit_cluster if a else [],
                         "online": a.rabbit_cluster if a else [], "leader": "x"}],
            ).model_dump(mode="json")  # fmt: skip

    def reg(self, url: str) -> Registration:
        port = int(url.rsplit(":", 1)[1])
        self.registration = Registration(
            hostname=f"host-{self.ip.rsplit('.', 1)[1]}",
            ip=self.ip,
            port=port,
            erlang_hash=cookie_hash(self.cookie),
            rabbit_node=f"n-{self.ip}@localhost",
            amqp_port=5700 + int(self.ip.rsplit(".", 1)[1]),
            dist_port=25700 + int(self.ip.rsplit(".", 1)[1]),
        )
        return self.registration


def dead(ip: str) -> Registration:
    """A registered machine whose agent does not answer (nothing listens on its port)."""
    return Registration(
        hostname="gone",
        ip=ip,
        port=free_port(ip),
        erlang_hash="0" * 64,
        rabbit_node=f"n-{ip}@localhost",
        amqp_port=1,
        dist_port=2,
    )


@pytest.fixture
def agents() -> Iterator[dict[str, FakeAgent]]:
    """Fake agents on 127.0.0.9, .10 and .11 (``.9`` < ``.10`` as addresses, not as strings)."""
    fakes = {
        ip: FakeAgent(ip, cookie=f"COOKIE{ip.replace('.', '')}")
        for ip in ("127.0.0.9", "127.0.0.10", "127.0.0.11")
    }
    with (
        serve_app(fakes["127.0.0.9"].app, "127.0.0.9") as u9,
        serve_app(fakes["127.0.0.10"].app, "127.0.0.10") as u10,
        serve_app(fakes["127.0.0.11"].app, "127.0.0.11") as u11,
    ):
        for fake, url in zip(fakes.values(), (u9, u10, u11), strict=True):
            fake.reg(url)
        yield fakes


@pytest.fixture
def coord(tmp_path: Path) -> Coordinator:
    return Coordinator(tmp_path / "coord", SecretStr(TOKEN), probe_timeout_s=2.0)


@pytest.fixture
def served(coord: Coordinator) -> Iterator[str]:
    with serve_app(create_app(coord), "127.0.0.1") as url:
        yield url


def register_all(coord: Coordinator, agents: dict[str, FakeAgent], *extra: Registration) -> None:
    for fake in agents.values():
        assert fake.registration is not None
        coord.register(fake.registration)
    for r in extra:
        coord.register(r)


def test_calls_without_the_token_are_refused(
    served: str, agents: dict[str, FakeAgent], coord: Coordinator
) -> None:
    reg = agents["127.0.0.9"].registration
    assert reg is not None
    for token in ("", "wrong-token"):
        with CoordinatorClient(served, token) as c, pytest.raises(Unauthorized) as err:
            c.register(reg)
        assert (TOKEN not in str(err.value) and token not in str(err.value)) or not token
        with CoordinatorClient(served, token) as c, pytest.raises(Unauthorized):
            c.status()
    assert coord.machines() == []
    # Monitoring needs no token: before any init the verdict is "down" (503).
    health = httpx.get(f"{served}/health", timeout=30)
    assert health.status_code == 503 and health.json()["status"] == "down"
    with CoordinatorClient(served, TOKEN) as c:
        assert c.live()["ok"] is True
        c.register(reg)
        assert [m["ip"] for m in c.machines()] == ["127.0.0.9"]


def test_registrations_persist_without_secrets(
    tmp_path: Path, coord: Coordinator, agents: dict[str, FakeAgent]
) -> None:
    register_all(coord, agents)
    # A second registration of the same machine (an agent restarted on another port) replaces it.
    again = agents["127.0.0.9"].registration
    assert again is not None
    coord.register(again.model_copy(update={"port": again.port + 1}))
    path = tmp_path / "coord" / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reloaded = Coordinator(tmp_path / "coord", SecretStr(TOKEN))
    ips = [m.ip for m in reloaded.machines()]
    assert ips == ["127.0.0.9", "127.0.0.10", "127.0.0.11"]  # address order, not string order
    assert reloaded.machines()[0].port == again.port + 1


def test_init_by_count_sends_initial_everywhere_with_the_masters_cookie(
    tmp_path: Path, coord: Coordinator, agents: dict[str, FakeAgent]
) -> None:
    gone = dead("127.0.0.12")
    register_all(coord, agents, gone)
    result = coord.init(InitRequest(train=1, inference=3, **TASK))

    roles = {m["ip"]: m["type"] for m in result["machines_info"]}
    assert roles == {
        "127.0.0.9": "train",
        "127.0.0.10": "inference",
        "127.0.0.11": "inference",
        "127.0.0.12": "inference",
    }
    # The cookie came from the inference master's agent (127.0.0.10), and only from there.
    assert agents["127.0.0.10"].cookie_calls == 1
    assert agents["127.0.0.9"].cookie_calls == agents["127.0.0.11"].cookie_calls == 0
    for fake in agents.values():
        assert len(fake.requests) == 1
        sent = fake.requests[0]
        assert sent["erlang_cookie"] == "COOKIE127001" + "0"
        assert sent["task_datastore_path"] == "/data/task-1"
        assert [m["ip"] for m in sent["machines_info"]] == list(roles)
    assert set(result["answers"]) == {"127.0.0.9", "127.0.0.10", "127.0.0.11"}
    assert set(result["errors"]) == {"127.0.0.12"}
    assert result["master_train"] == "127.0.0.9"
    assert result["master_inference"] == "127.0.0.10"
    assert result["erlang_hash"] == cookie_hash("COOKIE1270010")
    assert result["consistent"] is True
    answer = result["answers"]["127.0.0.11"]
    assert [m["ip"] for m in answer["bad_machines_info"]] == ["127.0.0.12"]
    # The state remembers it all, but never the cookie itself.
    text = (tmp_path / "coord" / STATE_FILE).read_text()
    assert "COOKIE1270010" not in text
    state = json.loads(text)
    assert state["master_inference"] == "127.0.0.10" and state["task"]["task_category"]


def test_init_creates_the_task_then_attaches_to_it(
    coord: Coordinator, agents: dict[str, FakeAgent], live_url: str
) -> None:
    """With labels, ``init`` creates the seed's task on master_train's label-ingest service (a
    live labelloop app here); a second ``init`` finds it by name; another name adds a task."""
    agents["127.0.0.9"].service = live_url  # the train master's service
    register_all(coord, agents)
    fields = {**TASK, "task_extra_info": "multi-label", "task_labels": ["cat", "dog"]}
    first = coord.init(InitRequest(train=1, inference=2, **fields))["task"]
    assert first["created"] is True and first["name"] == "task-1" and first["service"] == live_url
    with Client(live_url) as api:
        task = api.get_task(first["id"])
    assert task["category"] == "image-classification" and task["extra"] == "multi-label"
    assert task["labels"] == ["cat", "dog"]

    again = coord.init(InitRequest(train=1, inference=2, **fields))["task"]
    assert again == {**first, "created": False}
    other = coord.init(InitRequest(train=1, inference=2, task_name="birds", **fields))["task"]
    assert other["created"] is True and other["id"] != first["id"]
    with pytest.raises(InvalidInput) as err:
        coord.init(
            InitRequest(
                train=1, inference=2, **{**fields, "task_category": "audio", "task_name": "x"}
            )
        )
    assert "could not be created" in err.value.message


def test_init_with_a_machines_file(coord: Coordinator, agents: dict[str, FakeAgent]) -> None:
    register_all(coord, agents)
    file = [
        {"ip": "127.0.0.11", "type": "train"},
        {"ip": "127.0.0.9", "type": "inference"},
        {"ip": "127.0.0.10", "type": "inference"},
    ]
    result = coord.init(InitRequest.model_validate({"machines_info": file, **TASK}))
    assert result["master_train"] == "127.0.0.11"
    assert result["master_inference"] == "127.0.0.9"
    assert agents["127.0.0.9"].cookie_calls == 1
    assert [m.type for m in coord.machines()] == ["inference", "inference", "train"]


def test_init_refuses_what_cannot_work(coord: Coordinator, agents: dict[str, FakeAgent]) -> None:
    register_all(coord, agents)
    with pytest.raises(InvalidInput, match="registered"):
        coord.init(InitRequest(train=2, inference=2, **TASK))
    with pytest.raises(InvalidInput, match="no machines"):
        coord.init(InitRequest(**TASK))
    both = {"train": 1, "machines_info": [{"ip": "127.0.0.9", "type": "train"}], **TASK}
    with pytest.raises(InvalidInput, match="not both"):
        coord.init(InitRequest.model_validate(both))
    unknown = {"machines_info": [{"ip": "127.0.0.99", "type": "train"}], **TASK}
    with pytest.raises(InvalidInput, match="not registered"):
        coord.init(InitRequest.model_validate(unknown))
    with pytest.raises(ValueError, match="does not appear to be an IPv4"):
        InitRequest.model_validate({"machines_info": [{"ip": "host-a", "type": "train"}], **TASK})
    assert all(not f.requests for f in agents.values())


def test_init_needs_an_answering_machine(coord: Coordinator) -> None:
    coord.register(dead("127.0.0.12"))
    with pytest.raises(Unavailable, match="no machine"):
        coord.init(InitRequest(inference=1, **TASK))


def test_join_initialises_only_the_late_machine(
    coord: Coordinator, agents: dict[str, FakeAgent]
) -> None:
    late = agents.pop("127.0.0.11")
    register_all(coord, agents)
    with pytest.raises(Conflict):
        coord.join(JoinRequest(ip="127.0.0.11"))
    coord.init(InitRequest(train=1, inference=1, **TASK))
    with pytest.raises(NotFound):
        coord.join(JoinRequest(ip="127.0.0.11"))
    assert late.registration is not None
    coord.register(late.registration)
    result = coord.join(JoinRequest(ip="127.0.0.11"))
    assert len(late.requests) == 1
    sent = late.requests[0]
    assert {m["ip"]: m["type"] for m in sent["machines_info"]} == {
        "127.0.0.9": "train",
        "127.0.0.10": "inference",
        "127.0.0.11": "inference",
    }
    assert sent["erlang_cookie"] == "COOKIE1270010"  # the running cluster's cookie
    assert sent["refresh"] is False
    # The others were not initialised again: each got one refresh, which lists the new machine.
    for f in agents.values():
        assert len(f.requests) == 2 and f.requests[1]["refresh"] is True
        assert "127.0.0.11" in {m["ip"] for m in f.requests[1]["machines_info"]}
        assert f.answer is not None and "127.0.0.11" in {m.ip for m in f.answer.good_machines_info}
    assert set(result["answers"]) == {"127.0.0.9", "127.0.0.10", "127.0.0.11"}
    assert result["master_inference"] == "127.0.0.10"
    assert late.answer is not None and late.answer.erlang_hash == cookie_hash("COOKIE1270010")
    status = coord.status()
    assert {m["ip"]: m["state"] for m in status["machines"]}["127.0.0.11"] == "good"


def test_status_shows_a_silent_agent_as_bad(
    coord: Coordinator, agents: dict[str, FakeAgent]
) -> None:
    gone = dead("127.0.0.12")
    register_all(coord, agents, gone)
    coord.init(InitRequest(train=1, inference=2, **TASK))  # .12 registered but given no role
    coord.register(gone)
    status = coord.status()
    states = {m["ip"]: m["state"] for m in status["machines"]}
    assert states == {
        "127.0.0.9": "good",
        "127.0.0.10": "good",
        "127.0.0.11": "good",
        "127.0.0.12": "bad",
    }
    rows = {m["ip"]: m for m in status["machines"]}
    assert rows["127.0.0.12"]["error"] and not rows["127.0.0.12"]["answers"]
    assert rows["127.0.0.10"]["service"] == "http://127.0.0.10:9/inference"
    assert status["rabbit_cluster"] == sorted(
        f"n-{ip}@localhost" for ip in ("127.0.0.9", "127.0.0.10", "127.0.0.11")
    )
    assert status["master_train"] == "127.0.0.9"


def test_down_stops_every_agent(coord: Coordinator, agents: dict[str, FakeAgent]) -> None:
    register_all(coord, agents, dead("127.0.0.12"))
    out = coord.down()["machines"]
    assert all(f.stopped == 1 for f in agents.values())
    assert out["127.0.0.9"] == {"stopped": True}
    assert "error" in out["127.0.0.12"]


def test_agent_client_errors() -> None:
    gone = dead("127.0.0.12")
    with AgentClient.of(gone, TOKEN, timeout=1.0) as a, pytest.raises(Unavailable) as err:
        a.status()
    assert TOKEN not in str(err.value)
    fake = FakeAgent("127.0.0.13")
    with serve_app(fake.app, "127.0.0.13") as url:
        fake.reg(url)
        with AgentClient(url, "wrong") as a, pytest.raises(Unauthorized):
            a.cookie()
        with AgentClient(url, TOKEN) as a:
            assert a.cookie().get_secret_value() == COOKIE
            assert COOKIE not in repr(a.cookie())


def test_cli_init_status_and_join(
    served: str, coord: Coordinator, agents: dict[str, FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    late = agents.pop("127.0.0.11")
    register_all(coord, agents, dead("127.0.0.12"))
    monkeypatch.setenv("LABELLOOP_CLUSTER_TOKEN", TOKEN)
    monkeypatch.setenv("LABELLOOP_COORDINATOR_URL", served)
    monkeypatch.setattr(cli.console, "width", 240)  # tables on one line each
    runner = CliRunner()
    got = runner.invoke(
        cli_app,
        [
            "cluster",
            "init",
            "--train",
            "1",
            "--inference",
            "2",
            "--task-category",
            "image-classification",
            "--task-datastore-path",
            "/data/t",
            "--json",
        ],
    )
    assert got.exit_code == 0, got.output
    result = json.loads(got.output)
    assert result["master_inference"] == "127.0.0.10" and set(result["errors"]) == {"127.0.0.12"}

    got = runner.invoke(cli_app, ["cluster", "status"])
    assert got.exit_code == 3, got.output  # degraded: .12 has a role and does not answer
    assert "inference master" in got.output and "bad" in got.output
    assert "n-127.0.0.10@localhost" in got.output

    got = runner.invoke(cli_app, ["cluster", "join", "--ip", "127.0.0.11"])
    assert got.exit_code == 2 and "no machine registered" in got.output
    assert late.registration is not None
    coord.register(late.registration)
    got = runner.invoke(cli_app, ["cluster", "join", "--ip", "127.0.0.11"])
    assert got.exit_code == 0, got.output
    assert len(late.requests) == 1

    monkeypatch.setenv("LABELLOOP_CLUSTER_TOKEN", "wrong-token-here")
    got = runner.invoke(cli_app, ["cluster", "status"])
    assert got.exit_code == 2 and "token was refused" in got.output


# -- truthful status ---------------------------------------------------------------------------


def crash_looping(name: str = "inference-127-0-0-11@h") -> WorkerStatus:
    return WorkerStatus(
        name=name, role="inference", pid=None, alive=False, restarts=4, state="crash-looping",
        recent_restarts=4, last_exit_code=2, log_file="/var/log/x.log",
        log_tail=["error: LABELLOOP_BROKER_URL uses RabbitMQ's default guest account"],
    )  # fmt: skip


def running(name: str) -> WorkerStatus:
    return WorkerStatus(name=name, role="inference", pid=1, alive=True, restarts=0, uptime_s=99.0)


def test_status_verdicts_and_exit_codes(
    served: str, coord: Coordinator, agents: dict[str, FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """healthy (0) -> degraded (3) when a machine's child crash-loops -> down (4) when a role has
    no good machine, and after ``cluster down``; the CLI's exit code and ``GET /health`` agree."""
    register_all(coord, agents)
    coord.HEALTH_TTL_S = 0.0  # type: ignore[misc]
    monkeypatch.setenv("LABELLOOP_CLUSTER_TOKEN", TOKEN)
    monkeypatch.setenv("LABELLOOP_COORDINATOR_URL", served)
    runner = CliRunner()

    def check(verdict: str, code: int, http: int) -> dict[str, Any]:
        got = runner.invoke(cli_app, ["cluster", "status", "--json"])
        assert got.exit_code == code, got.output
        status: dict[str, Any] = json.loads(got.output)
        assert status["health"] == verdict and status["exit_code"] == code
        resp = httpx.get(f"{served}/health", timeout=30)  # no token: for monitoring
        assert resp.status_code == http and resp.json()["status"] == verdict
        return status

    assert "not initialised" in check("down", 4, 503)["reason"]
    coord.init(InitRequest(train=1, inference=2, **TASK))
    for f in agents.values():
        f.workers = [running(f"w-{f.ip}")]
    check("healthy", 0, 200)

    agents["127.0.0.11"].workers = [crash_looping()]
    status = check("degraded", 3, 200)
    row = {r["ip"]: r for r in status["machines"]}["127.0.0.11"]
    assert row["state"] == "failing"
    assert any("crash-looping" in p and "exit code 2" in p for p in row["problems"])
    table = runner.invoke(cli_app, ["cluster", "status"])
    assert table.exit_code == 3
    assert "default guest account" in table.output and "/var/log/x.log" in table.output

    agents["127.0.0.9"].workers = [crash_looping("train-x@h")]  # the only train machine
    assert "no train machine is good" in check("down", 4, 503)["reason"]

    agents["127.0.0.9"].workers = agents["127.0.0.11"].workers = []
    check("healthy", 0, 200)
    assert runner.invoke(cli_app, ["cluster", "down"]).exit_code == 0
    status = check("down", 4, 503)
    assert status["reason"].startswith("stopped")
    assert {r["state"] for r in status["machines"]} == {"down"}


def test_a_machine_whose_node_is_not_a_member_is_not_good(
    coord: Coordinator, agents: dict[str, FakeAgent]
) -> None:
    register_all(coord, agents)
    coord.init(InitRequest(train=1, inference=2, **TASK))
    fake = agents["127.0.0.11"]
    assert fake.answer is not None
    fake.answer = fake.answer.model_copy(update={"rabbit_cluster": ["n-127.0.0.11@localhost"]})
    row = {r["ip"]: r for r in coord.status()["machines"]}["127.0.0.11"]
    assert row["state"] == "failing"
    assert "not a running member of n-127.0.0.10@localhost's cluster" in row["problems"][0]
    assert coord.status()["health"] == "degraded"


def test_status_never_shows_the_database_password(
    served: str, tmp_path: Path, coord: Coordinator, agents: dict[str, FakeAgent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    register_all(coord, agents)
    url = "postgresql+psycopg://labelloop:s3cret-pw@db.internal:5432/labelloop"
    secret_file = tmp_path / "db-url"
    secret_file.write_text(url + "\n")
    monkeypatch.setenv("LABELLOOP_CLUSTER_TOKEN", TOKEN)
    monkeypatch.setenv("LABELLOOP_COORDINATOR_URL", served)
    runner = CliRunner()
    args = ["cluster", "init", "--train", "1", "--inference", "2", "--task-category", "c",
            "--task-datastore-path", "/d", "--database-url-file", str(secret_file), "--json"]  # fmt: skip
    secret_file.chmod(0o644)
    refused = runner.invoke(cli_app, args)
    assert refused.exit_code == 2 and "chmod 600" in refused.output
    secret_file.chmod(0o600)
    got = runner.invoke(cli_app, args)
    assert got.exit_code == 0, got.output
    assert "s3cret-pw" not in got.output
    assert agents["127.0.0.9"].requests[-1]["database_url"] == url  # the agents get it
    status = runner.invoke(cli_app, ["cluster", "status", "--json"])
    assert "s3cret-pw" not in status.output
    shown = json.loads(status.output)["task"]["database_url"]
    assert shown == "postgresql+psycopg://labelloop:***@db.internal:5432/labelloop"
    state = tmp_path / "coord" / STATE_FILE
    assert "s3cret-pw" in state.read_text() and stat.S_IMODE(state.stat().st_mode) == 0o600


def test_init_stops_waiting_for_a_crash_looping_child_and_shows_its_log(
    served: str, coord: Coordinator, agents: dict[str, FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    register_all(coord, agents)
    agents["127.0.0.11"].workers = [crash_looping()]
    agents["127.0.0.10"].workers = [running("inference-127-0-0-10@h")]
    coord.settle_timeout_s = 600.0  # it must not wait that long
    monkeypatch.setenv("LABELLOOP_CLUSTER_TOKEN", TOKEN)
    monkeypatch.setenv("LABELLOOP_COORDINATOR_URL", served)
    started = time.monotonic()
    got = CliRunner().invoke(
        cli_app,
        ["cluster", "init", "--train", "1", "--inference", "2", "--task-category", "c",
         "--task-datastore-path", "/d"],
    )  # fmt: skip
    assert time.monotonic() - started < 120
    assert got.exit_code == 1, got.output
    assert "127.0.0.11: inference-127-0-0-11@h (inference) is crash-looping" in got.output
    assert "default guest account" in got.output and "/var/log/x.log" in got.output
    result = coord.init(InitRequest(train=1, inference=2, **TASK))
    assert list(result["failing"]) == ["127.0.0.11"]
    assert result["failing"]["127.0.0.11"][0]["last_exit_code"] == 2
    # Settling reads the processes only: no rabbitmqctl call per agent per poll.
    assert agents["127.0.0.11"].status_rabbit and not any(agents["127.0.0.11"].status_rabbit)


def test_metrics_count_restarts(
    served: str, coord: Coordinator, agents: dict[str, FakeAgent]
) -> None:
    register_all(coord, agents)
    coord.init(InitRequest(train=1, inference=2, **TASK))
    agents["127.0.0.11"].workers = [crash_looping()]
    text = httpx.get(f"{served}/metrics", timeout=30).text
    assert "labelloop_cluster_health 1.0" in text  # degraded
    assert 'labelloop_cluster_machines{state="failing"} 1.0' in text
    assert (
        'labelloop_cluster_child_restarts_total{child="inference-127-0-0-11@h",'
        'machine="127.0.0.11",role="inference"} 4.0'
    ) in text


def test_leave_removes_a_machine_and_refreshes_the_others(
    coord: Coordinator, agents: dict[str, FakeAgent]
) -> None:
    gone = dead("127.0.0.12")
    register_all(coord, agents, gone)
    coord.init(InitRequest(train=1, inference=3, **TASK))
    out = coord.leave("127.0.0.11")
    assert agents["127.0.0.11"].left == 1 and out["agent"]["left_rabbit_cluster"] is True
    assert "127.0.0.11" not in {m.ip for m in coord.machines()}
    for ip in ("127.0.0.9", "127.0.0.10"):
        last = agents[ip].requests[-1]
        assert last["refresh"] is True
        assert {m["ip"] for m in last["machines_info"]} == {"127.0.0.9", "127.0.0.10", "127.0.0.12"}
    # a machine that is gone: the first remaining machine that answers forgets its node
    out = coord.leave("127.0.0.12")
    assert "error" in out["agent"] and out["forgotten_by"] == "127.0.0.9"
    assert agents["127.0.0.9"].forgotten == ["n-127.0.0.12@localhost"]
    with pytest.raises(NotFound):
        coord.leave("127.0.0.12")


def test_rabbit_status_and_init_refresh_through_the_cli(
    served: str, coord: Coordinator, agents: dict[str, FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    register_all(coord, agents)
    monkeypatch.setenv("LABELLOOP_CLUSTER_TOKEN", TOKEN)
    monkeypatch.setenv("LABELLOOP_COORDINATOR_URL", served)
    monkeypatch.setattr(cli.console, "width", 240)
    runner = CliRunner()
    refused = runner.invoke(cli_app, ["cluster", "init", "--refresh"])
    assert refused.exit_code == 2 and "nothing to refresh" in refused.output
    coord.init(InitRequest(train=1, inference=2, **TASK))
    got = runner.invoke(cli_app, ["cluster", "rabbit-status"])
    assert got.exit_code == 0, got.output
    assert "asked n-127.0.0.10@localhost (on 127.0.0.10)" in got.output  # the cluster master
    assert "3/3 online" in got.output
    got = runner.invoke(cli_app, ["cluster", "init", "--refresh", "--json"])
    assert got.exit_code == 0, got.output
    assert all(f.requests[-1]["refresh"] is True for f in agents.values())
    assert all(f.requests[-1]["task_datastore_path"] == "/data/task-1" for f in agents.values())


def test_a_member_that_registers_again_is_initialised_again(
    coord: Coordinator, agents: dict[str, FakeAgent]
) -> None:
    """An agent that restarted (a reboot, systemd) registers again: the coordinator runs its
    initial at once and refreshes the others, with no operator; not after `cluster down`."""
    register_all(coord, agents)
    coord.init(InitRequest(train=1, inference=2, **TASK))
    fake = agents["127.0.0.11"]
    assert fake.registration is not None
    coord.register(fake.registration)
    rejoin = coord.rejoins["127.0.0.11"]
    rejoin.join(timeout=60)
    assert not rejoin.is_alive()
    assert len(fake.requests) == 2  # initial on the machine that came back
    assert fake.requests[1]["refresh"] is False and fake.requests[1]["erlang_cookie"]
    others = [agents["127.0.0.9"], agents["127.0.0.10"]]
    assert all(len(f.requests) == 2 and f.requests[1]["refresh"] is True for f in others)
    coord.down()
    coord.register(fake.registration)
    assert coord.rejoins["127.0.0.11"] is rejoin  # none started: the cluster is down
