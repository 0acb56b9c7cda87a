"""Several "machines" on one host, for the cluster tests and ``bench/cluster_bootstrap.py``.

Each machine is a ``labelloop agent`` process on its own loopback address (127.0.0.2, 127.0.0.3,
...) with its own RabbitMQ node (name, AMQP and distribution ports, HOME with its cookie, data and
log folders), hosts file, data and log folders, and role-service port; one ``labelloop
coordinator`` process. :meth:`Machines.cleanup` ends everything started here, by PID: the agents'
workers and services, the agents, the coordinator, every RabbitMQ node (``rabbitmqctl stop``), and
the ``epmd`` daemons that were not running before.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import uvicorn
from fastapi import FastAPI

from labelloop.cluster.client import AgentClient, CoordinatorClient
from labelloop.cluster.protocol import Registration
from labelloop.cluster.rabbit import RabbitNode, epmd_pids
from labelloop.demo import free_port
from labelloop.errors import LabelloopError
from tests.celery_support import terminate, wait_for
from tests.support import wait_until

HOSTS_PREAMBLE = "127.0.0.1\tlocalhost\n# a line of the operator's own, left alone\n"


def port_pair(ip: str) -> tuple[int, int]:
    """An AMQP port free on all addresses whose distribution port (+20000) is free too."""
    for _ in range(100):
        port = free_port("0.0.0.0")
        if port + 20000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port + 20000))
            except OSError:
                continue
        return port, port + 20000
    raise RuntimeError("no free pair of ports")


@dataclass
class Machine:
    ip: str
    root: Path
    node: RabbitNode
    api_port: int
    proc: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def hosts_file(self) -> Path:
        return self.root / "hosts"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def agent_log(self) -> Path:
        return self.root / "agent.log"


class Machines:
    """The coordinator and the agents of one test or benchmark run."""

    def __init__(self, root: Path, token: str, concurrency: int = 1) -> None:
        self.root = root
        self.token = token
        self.concurrency = concurrency
        self.run_id = uuid.uuid4().hex[:6]
        self.machines: dict[str, Machine] = {}
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.coordinator_url = ""
        self._epmd_before = epmd_pids()
        self._descendants: set[int] = set()
        #: The broker user's password, made here (the cluster master's agent creates the user).
        self.broker_password = secrets.token_hex(16)
        # Production, as docs/DEPLOY.md runs it: real secrets, the broker's own user.
        self.base_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("LABELLOOP_", "RABBITMQ_"))
        } | {
            "LABELLOOP_ENVIRONMENT": "production",
            "LABELLOOP_CLUSTER_TOKEN": token,
            "LABELLOOP_LOG_LEVEL": "INFO",
        }
        self.agent_env = {
            "LABELLOOP_AGENT_BROKER_USER": "labelloop",
            "LABELLOOP_AGENT_BROKER_PASSWORD": self.broker_password,
        }

    def broker_url(self, amqp_port: int) -> str:
        """The URL workers use to reach a node (the user the agents created)."""
        return f"amqp://labelloop:{self.broker_password}@127.0.0.1:{amqp_port}//"

    # -- processes ------------------------------------------------------------------------------
    def _spawn(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 - the child keeps it
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "labelloop", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()

    def start_coordinator(self) -> CoordinatorClient:
        port = free_port()
        self.coordinator_url = f"http://127.0.0.1:{port}"
        self.coordinator = self._spawn(
            [
                "coordinator",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--state-dir",
                str(self.root / "coordinator"),
            ],
            self.base_env,
            self.root / "coordinator.log",
        )
        client = CoordinatorClient(self.coordinator_url, self.token)

        def up() -> bool:
            assert self.coordinator is not None
            if self.coordinator.poll() is not None:
                raise AssertionError(
                    f"coordinator exited: {self.tail(self.root / 'coordinator.log')}"
                )
            try:
                client.live()
                return True
            except LabelloopError:
                return False

        wait_for(up, 60, "the coordinator did not start")
        return client

    def start_agent(self, ip: str) -> Machine:
        """``labelloop agent`` for a machine at ``ip`` (its node starts in the agent's ``init``)."""
        root = self.root / f"m-{ip}"
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        (root / "hosts").write_text(HOSTS_PREAMBLE)
        amqp, dist = port_pair(ip)
        name = f"ll-{ip.rsplit('.', 1)[1]}-{self.run_id}@localhost"
        node = RabbitNode(
            name=name, amqp_port=amqp, dist_port=dist, home=home, base=home / "rabbitmq"
        )
        api_port = free_port(ip)
        env = (
            self.base_env
            | self.agent_env
            | {
                "LABELLOOP_AGENT_REGISTRY": self.coordinator_url,
                "LABELLOOP_AGENT_ADVERTISE_IP": ip,
                "LABELLOOP_AGENT_HOSTNAME": f"machine-{ip.rsplit('.', 1)[1]}",
                "LABELLOOP_AGENT_RABBIT_NODE": name,
                "LABELLOOP_AGENT_AMQP_PORT": str(amqp),
                "LABELLOOP_AGENT_DIST_PORT": str(dist),
                "LABELLOOP_AGENT_RABBIT_HOME": str(home),
                "LABELLOOP_AGENT_HOSTS_FILE": str(root / "hosts"),
                "LABELLOOP_AGENT_DATA_DIR": str(root / "data"),
                "LABELLOOP_AGENT_LOG_DIR": str(root / "logs"),
                "LABELLOOP_AGENT_API_PORT": str(api_port),
                "LABELLOOP_AGENT_WORKER_CONCURRENCY": str(self.concurrency),
                "LABELLOOP_AGENT_ICMP": "auto",
            }
        )
        proc = self._spawn(["agent"], env, root / "agent.log")
        machine = Machine(ip, root, node, api_port, proc, env)
        self.machines[ip] = machine
        return machine

    def stop_agent(self, ip: str) -> None:
        """Stop a machine's agent cleanly (SIGTERM, as systemd stops it)."""
        self._remember_descendants()
        terminate(self.machines[ip].proc)

    def restart_agent(self, ip: str) -> Machine:
        """Start a stopped agent again with the same settings (systemd after a reboot)."""
        m = self.machines[ip]
        m.proc = self._spawn(["agent"], m.env, m.agent_log)
        return m

    def wait_registered(
        self, client: CoordinatorClient, ips: list[str], timeout: float = 180
    ) -> None:
        def done() -> bool:
            for ip in ips:
                proc = self.machines[ip].proc
                if proc.poll() is not None:
                    raise AssertionError(
                        f"agent {ip} exited: {self.tail(self.machines[ip].agent_log)}"
                    )
            return set(ips) <= {m["ip"] for m in client.machines()}

        wait_for(done, timeout, f"agents {ips} did not register", poll=0.5)

    def register_dead(self, client: CoordinatorClient, ip: str) -> Registration:
        """A machine that registered, then stopped answering (nothing listens at its port)."""
        reg = Registration(
            hostname=f"machine-{ip.rsplit('.', 1)[1]}",
            ip=ip,
            port=free_port(ip),
            erlang_hash="0" * 64,
            rabbit_node=f"ll-{ip.rsplit('.', 1)[1]}-{self.run_id}@localhost",
            amqp_port=1,
            dist_port=2,
        )
        client.register(reg)
        return reg

    def agent(self, ip: str, timeout: float = 30.0) -> AgentClient:
        m = self.machines[ip]
        reg = next(r for r in self._registrations() if r["ip"] == ip)
        return AgentClient(f"http://{m.ip}:{reg['port']}", self.token, timeout)

    def _registrations(self) -> list[dict[str, Any]]:
        with CoordinatorClient(self.coordinator_url, self.token) as c:
            return c.machines()

    def cli(
        self, *args: str, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``labelloop cluster ...`` against the coordinator, as an operator runs it."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "labelloop",
                "cluster",
                *args,
                "--coordinator",
                self.coordinator_url,
            ],
            env=self.base_env | {"COLUMNS": "200"} | (env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _remember_descendants(self) -> None:
        procs = [m.proc for m in self.machines.values()]
        if self.coordinator is not None:
            procs.append(self.coordinator)
        for p in procs:
            with suppress(psutil.Error):
                self._descendants |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)}

    @staticmethod
    def tail(path: Path, lines: int = 40) -> str:
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- cleanup --------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """End everything this run started (each step best effort; none skips the next)."""
        self._remember_descendants()
        if self.coordinator is not None and self.coordinator.poll() is None:
            with suppress(LabelloopError), CoordinatorClient(self.coordinator_url, self.token) as c:
                c.down(timeout=300)
        self._remember_descendants()
        for m in self.machines.values():
            terminate(m.proc)
        if self.coordinator is not None:
            terminate(self.coordinator)
        for pid in sorted(self._descendants):
            with suppress(psutil.Error):
                proc = psutil.Process(pid)
                proc.kill()
                proc.wait(timeout=10)
        for m in self.machines.values():
            with suppress(LabelloopError, OSError):
                m.node.stop(timeout_s=60)
        for pid in epmd_pids() - self._epmd_before:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def wait_serving(answers: dict[str, dict[str, Any]], timeout: float = 300) -> None:
    """Wait until every role service answers and lists every worker of ``answers`` as live
    (each worker replied to the broadcast status command: it is consuming its queue)."""
    from labelloop.client import Client, ClientError

    services = [a["rpc"] for a in answers.values() if a["rpc"]]
    workers = {w for a in answers.values() for w in a["workers"]}

    def ready() -> bool:
        seen: set[str] = set()
        for url in services:
            try:
                with Client(url, timeout=30) as api:
                    api.health()
                    seen |= {w["name"] for w in api.cluster_workers()["workers"]}
            except ClientError:
                return False
        return workers <= seen

    wait_for(ready, timeout, f"services {services} and workers {sorted(workers)}", poll=0.5)


@contextmanager
def serve_app(app: FastAPI, host: str, config: uvicorn.Config | None = None) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on ``host`` (with ``config``, e.g. TLS, if given);
    yields its base URL."""
    if config is None:
        config = uvicorn.Config(app, host=host, port=free_port(host), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 20, f"fake server on {host}")
    assert thread.is_alive(), f"fake server on {host} exited while starting"
    scheme = "https" if config.ssl_certfile else "http"
    try:
        yield f"{scheme}://{host}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1-3 signed by it, made with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "node.key", "-out", "node.csr")  # fmt: skip
    (folder / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,DNS:localhost\n"
    )
    ssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "node.pem")  # fmt: skip
    for name in ("ca.key", "node.key"):
        (folder / name).chmod(0o600)
    return {"ca": folder / "ca.pem", "cert": folder / "node.pem", "key": folder / "node.key"}
