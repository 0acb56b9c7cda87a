"""The coordinator against fake agents: real HTTP on loopback addresses, no RabbitMQ.

Each fake agent is a small FastAPI app on its own 127.0.0.x address that checks the token, hands
out its cookie, and answers ``initial`` the way the seed says (TCP probe, smallest address elected).
"""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
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
    Registration,
    cookie_hash,
)
from labelloop.demo import free_port
from labelloop.errors import Conflict, InvalidInput, NotFound, Unauthorized, Unavailable
from tests.support import wait_until

TOKEN = "test-cluster-token-0123456789"
COOKIE = "SECRETCOOKIEABCDEFGH"
TASK = {"task_category": "image-classification", "task_datastore_path": "/data/task-1"}


@contextmanager
def serve_app(app: FastAPI, host: str) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on ``host``; yields its base URL."""
    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 20, f"fake server on {host}")
    assert thread.is_alive(), f"fake server on {host} exited while starting"
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


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
        def status(authorization: str | None = Header(None)) -> Any:
            auth(authorization)
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
            ).model_dump(mode="json")

        @self.app.post("/rpc/stop")
        def stop(authorization: str | None = Header(None)) -> dict[str, Any]:
            auth(authorization)
            self.stopped += 1
            return {"stopped": True}

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
    with CoordinatorClient(served, TOKEN) as c:
        assert c.health()["status"] == "ok"
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
    assert all(len(f.requests) == 1 for f in agents.values())  # the others were left alone
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
    assert got.exit_code == 0, got.output
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
