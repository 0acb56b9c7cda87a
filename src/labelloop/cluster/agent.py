"""``labelloop agent``: the seed's ``manager_rpc``, one per machine.

On start (the seed's ``init``) it finds this machine's IP, a port for its RPC, the hostname, starts
or finds the local RabbitMQ node and reads its Erlang cookie; it registers that with the coordinator
and serves its RPC. ``initial`` then runs the seed's steps i to vi (probe, hosts file, election, join
the RabbitMQ cluster, supervised Celery workers, the role's service) and is idempotent: called again
with the same request it finds everything in place and changes nothing.

The agent runs privileged actions, so every RPC call but ``health`` needs the cluster token
(compared in constant time); the Erlang cookie leaves the machine only in the authenticated
``cookie`` call and is never logged (answers carry its sha256, ``erlang_hash``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from fastapi import Depends, FastAPI, Request
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from labelloop.cluster.election import masters
from labelloop.cluster.hosts import write_hosts
from labelloop.cluster.probe import probe_machines
from labelloop.cluster.protocol import (
    RPC_PREFIX,
    AgentStatus,
    InitialAnswer,
    InitialRequest,
    MachineInfo,
    Registration,
    Role,
    bearer,
    cookie_hash,
)
from labelloop.cluster.rabbit import DEFAULT_BIN, RabbitNode
from labelloop.cluster.supervisor import ProcessSpec, Supervisor
from labelloop.errors import ConfigError, InvalidInput, Unauthorized, Unavailable

log = logging.getLogger(__name__)

#: Celery queues a machine of each role consumes (a train machine also runs a data worker).
WORKER_ROLES: dict[str, tuple[str, ...]] = {"train": ("data", "train"), "inference": ("inference",)}
SERVICE_NAME = "service"


class AgentSettings(BaseSettings):
    """Everything machine-specific about an agent (``LABELLOOP_AGENT_*``), so that several agents
    can run on one host in tests. The cluster token is ``LABELLOOP_CLUSTER_TOKEN``."""

    model_config = SettingsConfigDict(env_prefix="LABELLOOP_AGENT_", extra="ignore")

    registry: str | None = Field(default=None, description="The coordinator's URL.")
    advertise_ip: str | None = Field(default=None, description="Default: the IP towards registry.")
    port: int = Field(default=0, ge=0, le=65535, description="RPC port; 0 picks a free one.")
    hostname: str | None = None
    rabbit_node: str | None = Field(default=None, description="Default rabbit@<short hostname>.")
    amqp_port: int = 5672
    dist_port: int | None = Field(default=None, description="Default: AMQP port + 20000.")
    rabbit_home: Path | None = Field(
        default=None,
        description="The node's HOME (its .erlang.cookie); its data and logs go below it too. "
        "Default: /var/lib/rabbitmq with the installation's own folders.",
    )
    rabbit_bin: Path = DEFAULT_BIN
    start_rabbit: bool = Field(default=True, description="Start the node if it is not running.")
    stop_rabbit_on_exit: bool = False
    hosts_file: Path = Path("/etc/hosts")
    data_dir: Path = Path("labelloop-agent")
    log_dir: Path | None = Field(default=None, description="Worker logs; default data_dir/logs.")
    api_port: int = Field(default=8000, description="Port of the role service (seed step vi).")
    broker_user: str = "guest"
    broker_password: SecretStr = SecretStr("guest")
    worker_concurrency: int | None = Field(default=None, ge=1)
    probe_timeout_s: float = Field(default=1.0, gt=0)
    icmp: Literal["auto", "on", "off"] = "auto"

    @property
    def node_name(self) -> str:
        return self.rabbit_node or f"rabbit@{socket.gethostname().split('.')[0]}"

    @property
    def logs(self) -> Path:
        return self.log_dir or self.data_dir / "logs"


def local_ip(towards: str | None) -> str:
    """The address this machine uses to reach ``towards`` (a URL), else its hostname's address."""
    host = urlsplit(towards).hostname if towards else None
    if host:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((host, 9))  # UDP: no packet is sent, the kernel only picks a route
                return str(s.getsockname()[0])
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def machine_id(ip: str) -> str:
    """A name part for Celery hostnames made from an IP (unique per machine, even on one host)."""
    return re.sub(r"[^0-9A-Za-z]+", "-", ip).strip("-")


def check_token(expected: SecretStr, header: str | None) -> None:
    """Refuse a call without ``Authorization: Bearer <cluster token>`` (constant-time compare)."""
    scheme, _, given = (header or "").partition(" ")
    ok = hmac.compare_digest(given.strip().encode(), expected.get_secret_value().encode())
    if scheme.lower() != "bearer" or not ok:
        raise Unauthorized("this call needs the cluster token")


class Agent:
    """The agent's state and the seed's ``init`` and ``initial``; :meth:`app` is its RPC."""

    def __init__(self, settings: AgentSettings, token: SecretStr) -> None:
        self.settings = settings
        self.token = token
        home = settings.rabbit_home
        self.node = RabbitNode(
            name=settings.node_name,
            amqp_port=settings.amqp_port,
            dist_port=settings.dist_port or settings.amqp_port + 20000,
            home=home or Path("/var/lib/rabbitmq"),
            base=home / "rabbitmq" if home is not None else None,
            bin_dir=settings.rabbit_bin,
        )
        self.supervisor = Supervisor()
        self.machine: Registration | None = None
        self.role: Role | None = None
        self.good: list[MachineInfo] = []
        self.bad: list[MachineInfo] = []
        self.master_train = ""
        self.master_inference = ""
        self.service: str | None = None
        self.probe_method = ""
        self._lock = threading.Lock()

    # -- init (seed step 1) ------------------------------------------------------------------

    def init(self, sock: socket.socket | None = None) -> Registration:
        """Collect this machine's facts; start or find its RabbitMQ node; read its cookie."""
        s = self.settings
        ip = s.advertise_ip or local_ip(s.registry)
        port = sock.getsockname()[1] if sock is not None else s.port
        if s.start_rabbit:
            self.node.start()
        elif not self.node.is_running():
            raise Unavailable(f"RabbitMQ node {self.node.name} is not running")
        self.machine = Registration(
            hostname=s.hostname or socket.gethostname(),
            ip=ip,
            port=port,
            erlang_hash=self.node.cookie_hash(),
            rabbit_node=self.node.name,
            amqp_port=self.node.amqp_port,
            dist_port=self.node.dist_port,
        )
        return self.machine

    def info(self) -> Registration:
        """This machine as registered, with the cookie's current hash (it changes on joining)."""
        if self.machine is None:
            raise Unavailable("the agent has not finished starting")
        return self.machine.model_copy(update={"erlang_hash": self.node.cookie_hash()})

    def register(self, attempts: int = 30, delay_s: float = 1.0) -> None:
        """Post this machine to the coordinator (seed step 1.2), retrying while it is not up."""
        if not self.settings.registry:
            return
        url = self.settings.registry.rstrip("/") + "/register"
        body = self.info().model_dump(mode="json")
        for attempt in range(attempts):
            try:
                resp = httpx.post(url, json=body, headers=bearer(self._secret()), timeout=10)
                if resp.status_code < 300:
                    log.info("registered with %s", self.settings.registry)
                    return
                if resp.status_code in (401, 403, 422):
                    raise ConfigError(
                        f"the coordinator refused the registration ({resp.status_code})"
                    )
            except httpx.HTTPError as exc:
                log.info("coordinator not reachable yet (%s)", type(exc).__name__)
            if attempt < attempts - 1:
                time.sleep(delay_s)
        raise Unavailable(f"could not register with {self.settings.registry}")

    def _secret(self) -> str:
        return self.token.get_secret_value()

    # -- initial (seed step 2.1) -------------------------------------------------------------

    def initial(self, req: InitialRequest) -> InitialAnswer:
        """The seed's ``initial``, steps i to vi; safe to call again (nothing is duplicated)."""
        with self._lock:
            me = self._find_me(req.machines_info)
            if me.type is None:
                raise InvalidInput(f"machines_info gives {me.ip} no type (train or inference)")
            # i) who is reachable; the good machines go into the hosts file
            icmp = {"auto": None, "on": True, "off": False}[self.settings.icmp]
            probe = probe_machines(
                req.machines_info, timeout_s=self.settings.probe_timeout_s, use_icmp=icmp
            )
            good, bad = probe.good, probe.bad
            if not any(self._is_me(m) for m in good):  # we are answering: we are up
                good, bad = [*good, me], [m for m in bad if not self._is_me(m)]
            write_hosts(self.settings.hosts_file, [(m.ip, m.hostname) for m in good])
            # ii) masters: smallest address of each role among the good machines
            m_train, m_inf = masters(good)
            # iii) every good machine's node joins the inference master's cluster
            cluster_master = m_inf or m_train
            if cluster_master is not None and not self._is_me(cluster_master):
                cookie = self._cluster_cookie(req, cluster_master)
                self.node.join(cluster_master.rabbit_node, cookie)
            elif self.settings.broker_user != "guest":
                self.node.ensure_user(
                    self.settings.broker_user, self.settings.broker_password.get_secret_value()
                )
            # iv) the role's Celery workers, supervised
            env = self._child_env(req, [m for m in (m_inf, m_train) if m is not None])
            Path(req.task_datastore_path).mkdir(parents=True, exist_ok=True)
            workers = self._ensure_workers(me, env)
            # vi) the role's service
            n_inference = sum(1 for m in good if m.type == "inference")
            processes = 0
            if me.type == "inference":
                processes = max(1, n_inference)
            elif m_train is not None and self._is_me(m_train):
                processes = 1
            service = self._ensure_service(me, env, processes, req.api_port)
            self.role, self.good, self.bad = me.type, good, bad
            self.master_train = m_train.ip if m_train else ""
            self.master_inference = m_inf.ip if m_inf else ""
            self.service, self.probe_method = service, probe.method
            # v) the answer
            return InitialAnswer(
                rpc=service or "",
                bad_machines_info=bad,
                good_machines_info=good,
                master_train=self.master_train,
                master_inference=self.master_inference,
                erlang_hash=self.node.cookie_hash(),
                workers=workers,
                rabbit_cluster=self._members(),
                probe=probe.method,
            )

    def _is_me(self, m: MachineInfo | Registration) -> bool:
        me = self.machine
        return me is not None and m.ip == me.ip and m.port == me.port

    def _find_me(self, machines: list[MachineInfo]) -> MachineInfo:
        for m in machines:
            if self._is_me(m):
                return m
        where = f"{self.machine.ip}:{self.machine.port}" if self.machine else "this machine"
        raise InvalidInput(f"machines_info does not list {where}")

    def _cluster_cookie(self, req: InitialRequest, master: MachineInfo) -> str:
        """The cluster's cookie: sent with the request, else asked of the master's agent."""
        if req.erlang_cookie is not None:
            return req.erlang_cookie.get_secret_value()
        url = f"http://{master.ip}:{master.port}{RPC_PREFIX}/cookie"
        try:
            resp = httpx.post(url, headers=bearer(self._secret()), timeout=10)
            resp.raise_for_status()
            return str(resp.json()["cookie"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise Unavailable(
                f"could not get the cluster's cookie from {master.ip} ({type(exc).__name__})"
            ) from None

    def _broker_url(self, host: str, port: int) -> str:
        user = self.settings.broker_user
        password = self.settings.broker_password.get_secret_value()
        return f"amqp://{user}:{password}@{host}:{port}//"

    def _child_env(self, req: InitialRequest, cluster_masters: list[MachineInfo]) -> dict[str, str]:
        """Workers' and service's environment: local node first, the masters' as failover."""
        urls = [self._broker_url("127.0.0.1", self.node.amqp_port)]
        for m in cluster_masters:
            if not self._is_me(m):
                url = self._broker_url(m.ip, m.amqp_port)
                if url not in urls:
                    urls.append(url)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LABELLOOP_AGENT_", "RABBITMQ_"))
            and k not in ("LABELLOOP_CLUSTER_TOKEN",)
        }
        env |= {
            "LABELLOOP_BROKER_URL": ";".join(urls),
            "LABELLOOP_DATA_DIR": str(Path(req.task_datastore_path).resolve()),
            "LABELLOOP_JOBS": "celery",
        }
        if req.database_url:
            env["LABELLOOP_DATABASE_URL"] = req.database_url
        return env

    def _ensure_workers(self, me: MachineInfo, env: dict[str, str]) -> list[str]:
        assert me.type is not None
        host = me.hostname
        wanted: list[str] = []
        for role in WORKER_ROLES[me.type]:
            name = f"{role}-{machine_id(me.ip)}@{host}"
            argv = [sys.executable, "-m", "labelloop", "worker", "--role", role, "--hostname", name]
            if self.settings.worker_concurrency is not None:
                argv += ["--concurrency", str(self.settings.worker_concurrency)]
            log_file = self.settings.logs / f"{role}-{machine_id(me.ip)}.log"
            self.supervisor.ensure(ProcessSpec.make(name, role, argv, env, log_file))
            wanted.append(name)
        for name in self.supervisor.names():  # a machine whose role changed
            if name not in wanted and name != SERVICE_NAME:
                self.supervisor.stop(name)
        return wanted

    def _ensure_service(
        self, me: MachineInfo, env: dict[str, str], processes: int, api_port: int | None
    ) -> str | None:
        if processes < 1:
            self.supervisor.stop(SERVICE_NAME)
            return None
        port = api_port or self.settings.api_port
        argv = [
            sys.executable, "-m", "labelloop", "serve", "--jobs", "celery",
            "--host", me.ip, "--port", str(port), "--processes", str(processes),
        ]  # fmt: skip
        log_file = self.settings.logs / f"service-{machine_id(me.ip)}.log"
        role = "predict" if me.type == "inference" else "label-ingest"
        self.supervisor.ensure(ProcessSpec.make(SERVICE_NAME, role, argv, env, log_file))
        host = f"[{me.ip}]" if ipaddress.ip_address(me.ip).version == 6 else me.ip
        return f"http://{host}:{port}"

    def _members(self) -> list[str]:
        try:
            return self.node.running_nodes()
        except Unavailable as exc:
            log.warning("cluster status of %s: %s", self.node.name, exc.message)
            return []

    # -- status, stop ------------------------------------------------------------------------

    def status(self) -> AgentStatus:
        masters_: dict[str, str] = {}
        if self.master_train:
            masters_["train"] = self.master_train
        if self.master_inference:
            masters_["inference"] = self.master_inference
        return AgentStatus(
            machine=self.info(),
            role=self.role,
            good=[m.ip for m in self.good],
            bad=[m.ip for m in self.bad],
            masters=masters_,
            workers=self.supervisor.status(),
            rabbit_cluster=self._members(),
            service=self.service,
        )

    def stop(self, rabbit: bool = True) -> dict[str, Any]:
        """Stop the workers and service this agent started, and its node if it started it."""
        with self._lock:
            names = self.supervisor.names()
            self.supervisor.stop_all()
            self.supervisor = Supervisor()
            stopped_node = False
            if rabbit and self.node.started_by_us:
                self.node.stop()
                stopped_node = True
            self.service = None
            return {"stopped": names, "rabbit_stopped": stopped_node}

    # -- the RPC -----------------------------------------------------------------------------

    def app(self, *, register: bool = True) -> FastAPI:
        """The agent's RPC: ``/rpc/<call>``, all but ``health`` behind the cluster token."""
        from labelloop.api import errors

        agent = self

        def authorised(request: Request) -> None:
            check_token(agent.token, request.headers.get("authorization"))

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            if register and agent.settings.registry:
                threading.Thread(target=agent._register_quietly, daemon=True).start()
            try:
                yield
            finally:
                agent.supervisor.stop_all()
                if agent.settings.stop_rabbit_on_exit and agent.node.started_by_us:
                    agent.node.stop()

        app = FastAPI(title="labelloop agent", lifespan=lifespan, docs_url=None, redoc_url=None)
        errors.install(app)
        secured = [Depends(authorised)]

        @app.get(f"{RPC_PREFIX}/health")
        def health() -> dict[str, Any]:
            return {"ok": True, "node": agent.node.name}

        @app.post(f"{RPC_PREFIX}/info", dependencies=secured)
        def info() -> Registration:
            return agent.info()

        @app.post(f"{RPC_PREFIX}/cookie", dependencies=secured)
        def cookie() -> dict[str, str]:
            # The only place the cookie leaves the machine: an authenticated answer, never logged.
            return {"cookie": agent.node.read_cookie()}

        @app.post(f"{RPC_PREFIX}/initial", dependencies=secured)
        def initial(req: InitialRequest) -> InitialAnswer:
            return agent.initial(req)

        @app.post(f"{RPC_PREFIX}/status", dependencies=secured)
        def status() -> AgentStatus:
            return agent.status()

        @app.post(f"{RPC_PREFIX}/stop", dependencies=secured)
        def stop() -> dict[str, Any]:
            return agent.stop()

        return app

    def _register_quietly(self) -> None:
        try:
            self.register()
        except (Unavailable, ConfigError) as exc:
            log.error("registration failed: %s", exc.message)


def bind_socket(ip: str, port: int) -> socket.socket:
    """The RPC's listening socket, bound now so the port (picked free if 0) is known and ours."""
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((ip, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {ip}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def run_agent(settings: AgentSettings, token: SecretStr) -> None:
    """``labelloop agent``: init, register, serve the RPC until stopped."""
    import uvicorn

    agent = Agent(settings, token)
    ip = settings.advertise_ip or local_ip(settings.registry)
    sock = bind_socket(ip, settings.port)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    machine = agent.init(sock)
    log.info(
        "agent %s on %s:%s, RabbitMQ node %s (AMQP %s)",
        machine.hostname,
        machine.ip,
        machine.port,
        machine.rabbit_node,
        machine.amqp_port,
    )
    config = uvicorn.Config(agent.app(), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["Agent", "AgentSettings", "cookie_hash", "run_agent"]
