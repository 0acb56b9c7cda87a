"""The issue's scenario, for real, on one host: one train and three inference machines (agents on
127.0.0.2 to 127.0.0.5, each with its own RabbitMQ node, ports, HOME, hosts file and workers), a
registered machine at 127.0.0.6 that does not answer, one coordinator, a shared data folder and a
PostgreSQL database of the test's own; later a fifth agent (127.0.0.7) registers and joins.

Everything runs in production mode, as docs/DEPLOY.md says: real secrets made here, the broker's
own user, the database URL from the environment (never on a command line).

The tests run in order on one cluster (each builds on the state the previous one left): the
status is degraded (3) while the dead machine has a role, healthy (0) once it left, degraded when
a non-master node is lost, healthy again after ``cluster init --refresh``, and down (4) after
``cluster down``, which also leaves every hosts file as it was found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from labelloop.client import Client
from labelloop.cluster.client import CoordinatorClient
from labelloop.cluster.hosts import BEGIN, END
from labelloop.cluster.rabbit import COOKIE_NAME
from labelloop.demo import write_digits
from tests.celery_support import pg_database, wait_for
from tests.cluster.machines import HOSTS_PREAMBLE, Machines, wait_serving

pytestmark = [pytest.mark.cluster, pytest.mark.postgres, pytest.mark.timeout(1500)]

TOKEN = "five-machines-token-" + "x" * 16
TRAIN = "127.0.0.2"
INFERENCE = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
LIVE = [TRAIN, *INFERENCE]
DEAD = "127.0.0.6"
LATE = "127.0.0.7"
DIGITS = [str(d) for d in range(10)]
SEED_KEYS = {
    "rpc",
    "bad_machines_info",
    "good_machines_info",
    "master_train",
    "master_inference",
    "erlang_hash",
}


@dataclass
class Scenario:
    machines: Machines
    coordinator: CoordinatorClient
    datastore: Path
    init_args: list[str]
    init: dict[str, Any]
    links: list[tuple[str, str]]
    secret_env: dict[str, str]
    state: dict[str, Any] = field(default_factory=dict)

    def service(self, ip: str) -> str:
        url: str = self.init["answers"][ip]["rpc"]
        return url


def init_cli(m: Machines, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = m.cli("init", *args, "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("five")
    datastore = root / "shared" / "task-digits"
    # Items link to images below an import root, never into the datastore (labelloop's own).
    images = root / "shared" / "images"
    links = [(str(p), y) for p, y in write_digits(images, limit=120)]
    with pg_database() as db:
        m = Machines(root, TOKEN)
        m.base_env["LABELLOOP_IMPORT_ROOTS"] = str(images)  # agents pass it to their processes
        try:
            coordinator = m.start_coordinator()
            for ip in LIVE:
                m.start_agent(ip)
            m.wait_registered(coordinator, LIVE)
            m.register_dead(coordinator, DEAD)
            args = [
                "--train", "1", "--inference", "4",
                "--task-category", "image-classification",
                "--task-extra-info", "multi-class",
                "--task-datastore-path", str(datastore),
            ]  # fmt: skip
            env = {"LABELLOOP_DATABASE_URL": db}  # holds a password: from the environment
            result = init_cli(m, args, env)
            wait_serving(result["answers"])
            yield Scenario(m, coordinator, datastore, args, result, links, env)
        finally:
            m.cleanup()


def ips(machines: list[dict[str, Any]]) -> list[str]:
    return sorted(x["ip"] for x in machines)


def hosts_block(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return lines[lines.index(BEGIN) + 1 : lines.index(END)]


def test_initial_answers(scenario: Scenario) -> None:
    result = scenario.init
    roles = {x["ip"]: x["type"] for x in result["machines_info"]}
    assert roles == {TRAIN: "train", **dict.fromkeys([*INFERENCE, DEAD], "inference")}
    assert set(result["answers"]) == set(LIVE)
    assert set(result["errors"]) == {DEAD}
    cookie = (scenario.machines.machines[INFERENCE[0]].node.home / COOKIE_NAME).read_text().strip()
    for ip, answer in result["answers"].items():
        assert set(answer) >= SEED_KEYS, ip
        assert ips(answer["good_machines_info"]) == LIVE
        assert ips(answer["bad_machines_info"]) == [DEAD]
        assert answer["master_train"] == TRAIN
        assert answer["master_inference"] == INFERENCE[0]
        assert answer["erlang_hash"] == hashlib.sha256(cookie.encode()).hexdigest()
        assert answer["probe"] in ("icmp", "tcp")
        if ip == TRAIN or ip in INFERENCE:
            assert answer["rpc"].startswith(f"http://{ip}:")
        assert cookie not in json.dumps(answer)
    assert result["consistent"] is True
    assert result["failing"] == {}  # every child of every machine up (production mode)
    workers = {ip: sorted(a["workers"]) for ip, a in result["answers"].items()}
    assert [w.split("-")[0] for w in workers[TRAIN]] == ["data", "train"]
    assert all([w.split("-")[0] for w in workers[ip]] == ["inference"] for ip in INFERENCE)


def test_rabbitmq_cluster_has_every_node(scenario: Scenario) -> None:
    machines = scenario.machines.machines
    nodes = sorted(machines[ip].node.name for ip in LIVE)
    for ip in INFERENCE:
        status = machines[ip].node.cluster_status()
        assert sorted(str(n) for n in status["running_nodes"]) == nodes  # type: ignore[union-attr]
        assert sorted(str(n) for n in status["disk_nodes"]) == nodes  # type: ignore[union-attr]


def test_hosts_blocks_hold_exactly_the_good_machines(scenario: Scenario) -> None:
    for ip in LIVE:
        path = scenario.machines.machines[ip].hosts_file
        block = hosts_block(path)
        assert sorted(line.split()[0] for line in block) == LIVE
        assert all(
            line.split()[1] == f"machine-{line.split()[0].rsplit('.', 1)[1]}" for line in block
        )
        assert path.read_text().startswith("127.0.0.1\tlocalhost\n# a line of the operator's own")


def test_a_predict_job_crosses_nodes(scenario: Scenario) -> None:
    """The train machine runs no inference worker: a predict request its service publishes to
    its own node is answered by an inference worker attached to another node."""
    links = scenario.links
    with Client(scenario.service(TRAIN), timeout=120) as api:
        assert api.health()
        # The pixel learner: what is tested is where jobs run; which learner the loop would choose
        # from one label per class is the learner tests' business (and a near-tie there).
        policy = {"min_labels": 10, "learner": "pool-svm"}
        task = api.create_task("digits", "image-classification", DIGITS, policy=policy)
        items = api.add_items(task["id"], [{"data": p} for p, _ in links])["items"]
        wait_for(lambda: api.get_task(task["id"])["counts"]["pending"] == 0, 300, "featurize")
        first: dict[str, int] = {}
        for it, (_, y) in zip(items, links, strict=True):
            first.setdefault(y, it["id"])
        api.annotate(task["id"], [{"item_id": i, "labels": [y]} for y, i in first.items()])
        assert api.wait_for_training(task["id"], timeout=300)["served_version"] == 0
        got = api.predict(task["id"], [p for p, _ in links[-20:]])
    assert got["model_version"] == 0
    assert all(p["status"] == "ok" for p in got["predictions"])
    right = sum(
        p["labels"] == [y] for p, (_, y) in zip(got["predictions"], links[-20:], strict=True)
    )
    assert right >= 10
    scenario.state["task"] = task["id"]
    # The train machine's supervised processes: data and train workers and its service only.
    with scenario.machines.agent(TRAIN) as agent:
        roles = sorted(w.role for w in agent.status().workers)
    assert "inference" not in roles and {"data", "train"} <= set(roles)
    # Published through each inference node too: every predict service answers.
    for ip in INFERENCE:
        with Client(scenario.service(ip), timeout=120) as api:
            assert api.predict(task["id"], [links[0][0]])["predictions"][0]["status"] == "ok"


def test_second_initial_changes_nothing(scenario: Scenario) -> None:
    m = scenario.machines
    hosts = {ip: m.machines[ip].hosts_file.read_bytes() for ip in LIVE}

    def processes() -> dict[str, list[tuple[str, int | None, int]]]:
        out = {}
        for ip in LIVE:
            with m.agent(ip) as agent:
                out[ip] = sorted((w.name, w.pid, w.restarts) for w in agent.status().workers)
        return out

    before = processes()
    assert all(pid for ws in before.values() for _, pid, _ in ws)
    again = init_cli(m, scenario.init_args, scenario.secret_env)
    assert {ip: m.machines[ip].hosts_file.read_bytes() for ip in LIVE} == hosts
    assert processes() == before  # the same processes: none started twice, none restarted
    for ip in LIVE:
        a, b = scenario.init["answers"][ip], again["answers"][ip]
        for key in (*SEED_KEYS, "workers"):
            assert a[key] == b[key], (ip, key)
    # The first answers were snapshots taken while the others were joining; now all are members.
    nodes = sorted(m.machines[ip].node.name for ip in LIVE)
    assert all(sorted(b["rabbit_cluster"]) == nodes for b in again["answers"].values())
    assert m.machines[INFERENCE[1]].node.running_nodes() == nodes


def test_calls_without_the_token_are_refused(scenario: Scenario) -> None:
    m = scenario.machines
    with m.agent(INFERENCE[1]) as agent:
        base = agent.base_url
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": TOKEN}):
        for call in ("initial", "cookie", "status", "stop", "info"):
            resp = httpx.post(f"{base}/{call}", json={}, headers=headers, timeout=30)
            assert resp.status_code == 401, (call, headers)
        resp = httpx.post(f"{m.coordinator_url}/init", json={}, headers=headers, timeout=30)
        assert resp.status_code == 401
    assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    done = m.cli("status", "--json")
    assert done.returncode == 3, done.stderr  # degraded: the dead machine has a role
    m.base_env["LABELLOOP_CLUSTER_TOKEN"] = "wrong-token"
    try:
        refused = m.cli("status")
    finally:
        m.base_env["LABELLOOP_CLUSTER_TOKEN"] = TOKEN
    assert refused.returncode == 2 and "refused" in refused.stderr


def status_of(m: Machines, code: int) -> dict[str, Any]:
    """``cluster status --json``, which must exit with ``code``."""
    done = m.cli("status", "--json")
    assert done.returncode == code, done.stdout + done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def test_status_shows_roles_masters_workers_and_the_bad_machine(scenario: Scenario) -> None:
    status = status_of(scenario.machines, 3)
    assert status["health"] == "degraded"
    rows = {r["ip"]: r for r in status["machines"]}
    assert {ip: r["state"] for ip, r in rows.items()} == {
        **dict.fromkeys(LIVE, "good"),
        DEAD: "bad",
    }
    assert all(rows[ip]["problems"] == [] for ip in LIVE)
    assert status["master_train"] == TRAIN and status["master_inference"] == INFERENCE[0]
    nodes = sorted(scenario.machines.machines[ip].node.name for ip in LIVE)
    assert status["rabbit_cluster"] == nodes
    for ip in LIVE:
        assert rows[ip]["workers"] and all(w["alive"] for w in rows[ip]["workers"])
    table = scenario.machines.cli("status")
    assert table.returncode == 3
    for word in ("train master", "inference master", "bad", *nodes[:1], "degraded"):
        assert word in table.stdout


def test_the_dead_machine_leaves_and_the_cluster_is_healthy(scenario: Scenario) -> None:
    m = scenario.machines
    done = m.cli("leave", "--ip", DEAD, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    left = json.loads(done.stdout)
    assert "error" in left["agent"]  # it does not answer: the others forget it
    assert set(left["refresh"]["answers"]) == set(LIVE)
    status = status_of(m, 0)
    assert status["health"] == "healthy" and DEAD not in {r["ip"] for r in status["machines"]}
    for ip in LIVE:
        with m.agent(ip) as agent:
            assert DEAD not in agent.status().bad  # every view was refreshed
    health = httpx.get(f"{m.coordinator_url}/health", timeout=60)
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    rabbit = m.cli("rabbit-status", "--json")
    assert rabbit.returncode == 0, rabbit.stdout + rabbit.stderr
    got = json.loads(rabbit.stdout)
    assert got["running_nodes"] == sorted(m.machines[ip].node.name for ip in LIVE)
    assert got["missing_nodes"] == [] and got["partitions"] == {}
    queues = {q["name"]: q for q in got["queues"]}
    assert queues["inference"]["type"] == "quorum" and queues["inference"]["consumers"] >= 3
    workers = m.cli("workers", "--json")
    assert workers.returncode == 0, workers.stdout + workers.stderr
    names = {w["name"] for w in json.loads(workers.stdout)["workers"]}
    assert names == {w for a in scenario.init["answers"].values() for w in a["workers"]}


def test_losing_a_non_master_node_keeps_predictions_served(scenario: Scenario) -> None:
    m = scenario.machines
    task_id = scenario.state["task"]
    lost = m.machines[INFERENCE[2]]
    lost.node.stop()
    assert not lost.node.is_running()
    remaining = sorted(m.machines[ip].node.name for ip in LIVE if ip != INFERENCE[2])
    wait_for(
        lambda: m.machines[INFERENCE[0]].node.running_nodes() == remaining,
        60,
        "the cluster to notice the stopped node",
    )
    for ip in (TRAIN, INFERENCE[0], INFERENCE[1]):
        with Client(scenario.service(ip), timeout=120) as api:
            for _ in range(5):
                got = api.predict(task_id, [p for p, _ in scenario.links[:8]])
                assert all(p["status"] == "ok" for p in got["predictions"]), (ip, got)
    # the status tells: that machine is not good (its node is away), the cluster is degraded
    status = status_of(m, 3)
    row = {r["ip"]: r for r in status["machines"]}[INFERENCE[2]]
    assert row["state"] == "failing" and "does not answer" in row["problems"][0]
    # the recovery for a non-master: `cluster init --refresh` (its agent starts its node again,
    # which finds its cluster; its workers reconnect)
    done = m.cli("init", "--refresh", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["answers"][INFERENCE[2]]["rabbit_cluster"] == sorted(
        m.machines[ip].node.name for ip in LIVE
    )
    wait_for(lambda: m.cli("status").returncode == 0, 180, "the cluster healthy again", poll=2)


def test_a_late_machine_joins_and_serves(scenario: Scenario) -> None:
    m = scenario.machines
    task_id = scenario.state["task"]
    m.start_agent(LATE)
    m.wait_registered(scenario.coordinator, [LATE])
    done = m.cli("join", "--ip", LATE, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    answer = result["answers"][LATE]
    assert answer["master_inference"] == INFERENCE[0] and answer["master_train"] == TRAIN
    assert answer["erlang_hash"] == scenario.init["erlang_hash"]
    assert LATE in ips(answer["good_machines_info"]) and ips(answer["bad_machines_info"]) == []
    # every machine answered the join (a refresh): each one's view and hosts block has LATE
    assert set(result["answers"]) == {*LIVE, LATE}
    for ip in LIVE:
        assert ips(result["answers"][ip]["good_machines_info"]) == sorted([*LIVE, LATE])
        assert LATE in [line.split()[0] for line in hosts_block(m.machines[ip].hosts_file)]
    late_node = m.machines[LATE].node.name
    wait_for(
        lambda: late_node in m.machines[INFERENCE[0]].node.running_nodes(),
        60,
        "the late node in the cluster",
    )
    wait_serving(result["answers"])
    with Client(answer["rpc"], timeout=120) as api:
        got = api.predict(task_id, [p for p, _ in scenario.links[:8]])
        assert all(p["status"] == "ok" for p in got["predictions"])
        live = wait_for(
            lambda: {w["name"]: w for w in api.cluster_workers()["workers"]}.get(
                answer["workers"][0]
            ),
            60,
            "the late machine's worker to answer",
        )
    assert live["queues"] == ["inference"]
    status = status_of(m, 0)
    assert {r["ip"]: r["state"] for r in status["machines"]}[LATE] == "good"
    assert all(sorted(r["good"]) == sorted([*LIVE, LATE]) for r in status["machines"])


def test_a_restarted_agent_comes_back_by_itself(scenario: Scenario) -> None:
    """An agent that stops cleanly removes its hosts block; started again (systemd, a reboot),
    it registers and the coordinator runs initial on it at once: no operator command."""
    m = scenario.machines
    ip = INFERENCE[1]
    m.stop_agent(ip)
    assert m.machines[ip].hosts_file.read_text() == HOSTS_PREAMBLE
    m.restart_agent(ip)
    wait_for(lambda: m.cli("status").returncode == 0, 300, "the machine back by itself", poll=2)
    assert LATE in [line.split()[0] for line in hosts_block(m.machines[ip].hosts_file)]


def test_the_cookie_is_in_no_log(scenario: Scenario) -> None:
    m = scenario.machines
    cookies = {(mm.node.home / COOKIE_NAME).read_text().strip() for mm in m.machines.values()} - {
        ""
    }
    assert cookies
    cookies.add(m.broker_password)  # nor the broker's password
    checked = 0
    for path in m.root.rglob("*"):
        if not path.is_file() or path.name == COOKIE_NAME or "mnesia" in path.parts:
            continue
        text = path.read_bytes()
        for cookie in cookies:
            assert cookie.encode() not in text, path
        checked += 1
    logs = [p for p in m.root.rglob("*.log") if p.stat().st_size > 0]
    assert checked > 10 and len(logs) >= 10  # agents', workers', services', RabbitMQ's logs


def test_down_is_visible_and_leaves_the_hosts_as_found(scenario: Scenario) -> None:
    m = scenario.machines
    done = m.cli("down")
    assert done.returncode == 0, done.stdout + done.stderr
    status = status_of(m, 4)
    assert status["health"] == "down" and status["reason"].startswith("stopped")
    assert {r["state"] for r in status["machines"]} == {"down"}
    assert all(r["workers"] == [] for r in status["machines"])
    for ip in [*LIVE, LATE]:
        assert m.machines[ip].hosts_file.read_text() == HOSTS_PREAMBLE, ip
        assert m.machines[ip].proc.poll() is None  # the agents still answer
    health = httpx.get(f"{m.coordinator_url}/health", timeout=60)
    assert health.status_code == 503 and health.json()["status"] == "down"
