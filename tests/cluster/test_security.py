"""Secrets and TLS: the cluster token from the environment or a file (refused when missing in
production), secret files readable by their owner only, URLs shown without their password, every
agent setting an option of ``labelloop agent``, and agent and coordinator RPC over HTTPS with a
certificate made here (``openssl``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from pydantic import SecretStr
from typer.testing import CliRunner

from labelloop.cli import app as cli_app
from labelloop.cluster.agent import Agent, AgentSettings
from labelloop.cluster.cli import SECRET_SETTINGS
from labelloop.cluster.client import AgentClient, CoordinatorClient
from labelloop.cluster.coordinator import Coordinator, create_app
from labelloop.cluster.protocol import Registration, cookie_hash
from labelloop.cluster.rabbit import write_secret
from labelloop.cluster.security import (
    client_tls,
    cluster_token,
    read_secret_file,
    redact_url,
    server_tls,
)
from labelloop.config import load_settings
from labelloop.demo import free_port
from labelloop.errors import ConfigError, Unavailable
from tests.cluster.machines import make_certs, serve_app

TOKEN = "security-test-token-0123456789"


def test_the_token_comes_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LABELLOOP_CLUSTER_TOKEN", raising=False)
    monkeypatch.delenv("LABELLOOP_CLUSTER_TOKEN_FILE", raising=False)
    prod = load_settings(environment="production", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="LABELLOOP_CLUSTER_TOKEN is not set"):
        cluster_token(prod)
    assert cluster_token(load_settings(data_dir=tmp_path)).get_secret_value() == "dev-cluster-token"
    file = tmp_path / "token"
    file.write_text("from-a-file-0123456789\n")
    file.chmod(0o600)
    monkeypatch.setenv("LABELLOOP_CLUSTER_TOKEN_FILE", str(file))
    assert cluster_token(prod).get_secret_value() == "from-a-file-0123456789"
    monkeypatch.setenv("LABELLOOP_CLUSTER_TOKEN", "from-the-environment-01")
    prod = load_settings(environment="production", data_dir=tmp_path)
    assert cluster_token(prod).get_secret_value() == "from-the-environment-01"


def test_a_secret_file_must_be_private(tmp_path: Path) -> None:
    file = tmp_path / "secret"
    file.write_text("s3cret\n")
    file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret_file(file, "a secret")
    file.chmod(0o600)
    assert read_secret_file(file, "a secret") == "s3cret"
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret_file(tmp_path / "missing", "a secret")


def test_commands_refuse_to_run_without_a_token_in_production(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    env["LABELLOOP_ENVIRONMENT"] = "production"
    for args in (["agent", "--data-dir", str(tmp_path)], ["coordinator", "--port", "1"],
                 ["cluster", "status", "--coordinator", "http://127.0.0.1:1"]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "labelloop", *args],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, (args, done.stderr)
        assert (
            "LABELLOOP_CLUSTER_TOKEN is not set" in done.stderr and "Traceback" not in done.stderr
        )


def test_a_production_agent_refuses_the_guest_broker_account(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    env |= {"LABELLOOP_ENVIRONMENT": "production", "LABELLOOP_CLUSTER_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "labelloop", "agent", "--data-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "guest account" in done.stderr
    assert TOKEN not in done.stdout + done.stderr


def test_every_agent_setting_is_an_option() -> None:
    result = CliRunner().invoke(cli_app, ["agent", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in AgentSettings.model_fields:
        if name in SECRET_SETTINGS:
            assert f"--{name.replace('_', '-')} " not in result.output  # never on a command line
            assert f"--{name.replace('_', '-')}-file" in result.output
        else:
            assert f"--{name.replace('_', '-')}" in result.output, name
            assert f"LABELLOOP_AGENT_{name.upper()}" in result.output, name


def test_redacted_urls() -> None:
    assert redact_url("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_url("amqp://u:p%40ss@[::1]:5672//") == "amqp://u:***@[::1]:5672//"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact_url(None) is None


def test_a_rewritten_cookie_keeps_its_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    cookie = tmp_path / ".erlang.cookie"
    cookie.write_text("OLDCOOKIE")
    os.chown(cookie, 4321, 4322)  # the rabbitmq user, say
    cookie.chmod(0o400)
    write_secret(cookie, "NEWCOOKIE")
    st = cookie.stat()
    assert (st.st_uid, st.st_gid) == (4321, 4322) and st.st_mode & 0o777 == 0o600
    assert cookie.read_text() == "NEWCOOKIE"


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_agent(tmp_path: Path, certs: dict[str, Path]) -> Iterator[tuple[str, Agent]]:
    settings = AgentSettings(
        rabbit_node="ll-tls@localhost", amqp_port=1, rabbit_home=tmp_path / "home",
        hosts_file=tmp_path / "hosts", data_dir=tmp_path / "agent",
        tls_cert=certs["cert"], tls_key=certs["key"], tls_ca=certs["ca"],
    )  # fmt: skip
    agent = Agent(settings, SecretStr(TOKEN))
    cookie = agent.node.ensure_cookie()
    app = agent.app(register=False)
    port = free_port("127.0.0.2")
    agent.machine = Registration(
        hostname="h", ip="127.0.0.2", port=port, erlang_hash=cookie_hash(cookie),
        rabbit_node=agent.node.name, amqp_port=1, dist_port=2, scheme="https",
    )  # fmt: skip
    tls = server_tls(certs["cert"], certs["key"])
    config = uvicorn.Config(app, host="127.0.0.2", port=port, log_level="warning", **tls)  # type: ignore[arg-type]
    with serve_app(app, "127.0.0.2", config=config) as url:
        assert url.startswith("https://")
        yield url, agent


def test_agent_rpc_over_https(tls_agent: tuple[str, Agent], certs: dict[str, Path]) -> None:
    _, agent = tls_agent
    assert agent.machine is not None and agent.machine.rpc_url.startswith("https://127.0.0.2:")
    with AgentClient.of(agent.machine, TOKEN, verify=client_tls(certs["ca"])) as a:
        assert a.health()["ok"] is True
        assert a.info().scheme == "https"
    with (
        AgentClient.of(agent.machine, TOKEN, verify=client_tls(None)) as a,
        pytest.raises(Unavailable, match="not trusted"),
    ):
        a.health()  # a certificate from a CA the client was not given


def test_coordinator_over_https_talks_to_an_https_agent(
    tmp_path: Path, tls_agent: tuple[str, Agent], certs: dict[str, Path]
) -> None:
    _, agent = tls_agent
    assert agent.machine is not None
    coord = Coordinator(tmp_path / "coord", SecretStr(TOKEN), verify=client_tls(certs["ca"]))
    app = create_app(coord)
    port = free_port("127.0.0.3")
    tls = server_tls(certs["cert"], certs["key"])
    config = uvicorn.Config(app, host="127.0.0.3", port=port, log_level="warning", **tls)  # type: ignore[arg-type]
    with serve_app(app, "127.0.0.3", config=config) as url:
        with CoordinatorClient(url, TOKEN, verify=client_tls(certs["ca"])) as c:
            c.register(agent.machine)
            [row] = c.status()["machines"]
            assert row["answers"] is True and row["state"] == "unassigned"
        with pytest.raises(Unavailable, match="not trusted"), CoordinatorClient(url, TOKEN) as c:
            c.live()


def test_tls_settings_are_checked_at_start(tmp_path: Path, certs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="both"):
        server_tls(certs["cert"], None)
    with pytest.raises(ConfigError, match="cannot use"):
        server_tls(certs["cert"], certs["ca"])  # not its key
    with pytest.raises(ValueError, match="broker_tls needs"):
        AgentSettings(broker_tls=True, data_dir=tmp_path)
    with pytest.raises(ConfigError, match="cluster CA"):
        client_tls(tmp_path / "missing.pem")
