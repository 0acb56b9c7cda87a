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

import ipaddress
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field, SecretStr

from labelloop.api import errors as api_errors
from labelloop.cluster.client import AgentClient
from labelloop.cluster.election import masters
from labelloop.cluster.gate import GATE_ENV, close_gate, open_gate
from labelloop.cluster.hosts import aliases, remove_block, write_hosts
from labelloop.cluster.probe import probe_machines
from labelloop.cluster.protocol import (
    NODE_NAME_PATTERN,
    RPC_PREFIX,
    AgentStatus,
    InitialAnswer,
    InitialRequest,
    MachineInfo,
    RabbitStatus,
    Registration,
    Role,
    bearer,
    cookie_hash,
)
from labelloop.cluster.rabbit import RabbitNode, port_open
from labelloop.cluster.security import check_token, client_tls, secrets_of_url, server_tls
from labelloop.cluster.settings import AgentSettings
from labelloop.cluster.supervisor import ProcessSpec, Supervisor
from labelloop.errors import ConfigError, InvalidInput, LabelloopError, Unavailable

log = logging.getLogger(__name__)

#: Celery queues a machine of each role consumes (a train machine also runs a data worker).
WORKER_ROLES: dict[str, tuple[str, ...]] = {"train": ("data", "train"), "inference": ("inference",)}
SERVICE_NAME = "service"
#: Seconds before the second try of a join (then twice that, ...).
JOIN_RETRY_S = 2.0


class ForgetRequest(BaseModel):
    """``POST /rpc/forget``: a node gone for good, to remove from this node's cluster."""

    node: str = Field(pattern=NODE_NAME_PATTERN)


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


class Agent:
    """The agent's state and the seed's ``init`` and ``initial``; :meth:`app` is its RPC."""

    def __init__(
        self, settings: AgentSettings, token: SecretStr, environment: str = "development"
    ) -> None:
        self.settings = settings
        self.token = token
        self.environment = environment
        home = settings.rabbit_folder
        self.node = RabbitNode(
            name=settings.node_name,
            amqp_port=settings.amqp_port,
            dist_port=settings.dist_port or settings.amqp_port + 20000,
            home=home,
            base=home / "rabbitmq",
            bin_dir=settings.rabbit_bin,
            marker=settings.data_dir / "rabbit-node-started",
            config=settings.rabbitmq_conf(),
        )
        self.supervisor = Supervisor(scrub=self.scrub)
        #: Open (the file exists) once the node is ready for the workers and the service.
        self.gate = settings.data_dir / "start-gate"
        self.machine: Registration | None = None
        self.role: Role | None = None
        self.good: list[MachineInfo] = []
        self.bad: list[MachineInfo] = []
        self.master_train = ""
        self.master_inference = ""
        self.cluster_node: str | None = None
        self.service: str | None = None
        self.service_processes = 0
        self.probe_method = ""
        self.stopped = True  # nothing runs until the first initial
        self.initial_error: str | None = None
        self._database_url: str | None = None
        self._user_ready: tuple[str, str, str] | None = None
        self._lock = threading.Lock()

    # -- init (seed step 1) ------------------------------------------------------------------

    def init(self, sock: socket.socket | None = None) -> Registration:
        """Collect this machine's facts; start or find its RabbitMQ node; read its cookie."""
        s = self.settings
        ip = s.advertise_ip or local_ip(s.registry)
        port = sock.getsockname()[1] if sock is not None else s.port
        close_gate(self.gate)  # left by an earlier run: nothing passes before initial
        self._ensure_node()
        self.machine = Registration(
            hostname=s.hostname or socket.gethostname(),
            ip=ip,
            port=port,
            erlang_hash=self.node.cookie_hash(),
            rabbit_node=self.node.name,
            amqp_port=self.node.amqp_port,
            dist_port=self.node.dist_port,
            scheme="https" if s.tls_cert is not None else "http",
        )
        return self.machine

    def _ensure_node(self) -> None:
        """The local node running: found, or started when the settings allow."""
        if self.settings.start_rabbit and not self.settings.adopt_node:
            self.node.start()
        elif not self.node.is_running():
            raise Unavailable(
                f"RabbitMQ node {self.node.name} is not running (the agent starts only a node of "
                "its own: without --adopt-node and with --start-rabbit)"
            )

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
        verify = client_tls(self.settings.tls_ca)
        for attempt in range(attempts):
            try:
                resp = httpx.post(
                    url, json=body, headers=bearer(self._secret()), timeout=10, verify=verify
                )
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

    def scrub(self, text: str) -> str:
        """``text`` without this agent's secrets (log lines a status shows)."""
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _secrets(self) -> Iterable[str]:
        password = self.settings.broker_secret()
        if password and password != "guest":  # noqa: S105 - RabbitMQ's public default
            yield password
        yield from secrets_of_url(self._database_url)
        yield self._secret()

    # -- initial (seed step 2.1) -------------------------------------------------------------

    def initial(self, req: InitialRequest) -> InitialAnswer:
        """The seed's ``initial``, steps i to vi; safe to call again (nothing is duplicated).

        A failure is remembered (the status shows it, the machine is not good) until an
        ``initial`` succeeds.
        """
        with self._lock:
            try:
                answer = self._initial(req)
            except LabelloopError as exc:
                self.initial_error = exc.message
                raise
            self.initial_error = None
            self.stopped = False
            return answer

    def _initial(self, req: InitialRequest) -> InitialAnswer:
        me = self._find_me(req.machines_info)
        if me.type is None:
            raise InvalidInput(f"machines_info gives {me.ip} no type (train or inference)")
        self._database_url = req.database_url
        # i) who is reachable; the good machines go into the hosts file
        icmp = {"auto": None, "on": True, "off": False}[self.settings.icmp]
        started = time.monotonic()
        probe = probe_machines(
            req.machines_info, timeout_s=self.settings.probe_timeout_s, use_icmp=icmp
        )
        log.info(
            "initial: %d of %d machines reachable (%s probe, %.1f s)",
            len(probe.good), len(req.machines_info), probe.method, time.monotonic() - started,
        )  # fmt: skip
        good, bad = probe.good, probe.bad
        if not any(self._is_me(m) for m in good):  # we are answering: we are up
            good, bad = [*good, me], [m for m in bad if not self._is_me(m)]
        write_hosts(
            self.settings.hosts_file,
            [(m.ip, m.hostname, *aliases(m.hostname, m.rabbit_node.split("@")[1])) for m in good],
        )
        # ii) masters: smallest address of each role among the good machines
        m_train, m_inf = masters(good)
        # iii) every good machine's node joins the inference master's cluster
        cluster_master = m_inf or m_train
        target = cluster_master.rabbit_node if cluster_master is not None else None
        if cluster_master is not None and self._is_me(cluster_master):
            # Elected, yet a late machine (a smaller address): the running cluster is elsewhere.
            target = req.cluster_node if req.cluster_node != self.node.name else None
        # iv) the role's Celery workers and vi) its service, supervised, start first: they import
        # their code (seconds of CPU each) while the node gets ready (iii: seconds per rabbitmqctl
        # call), and wait at the start gate until it is.
        gate_was_open = self.gate.exists()
        env = self._child_env(req, [m for m in (m_inf, m_train) if m is not None])
        Path(req.task_datastore_path).mkdir(parents=True, exist_ok=True)
        workers = self._ensure_workers(me, env)
        n_inference = sum(1 for m in good if m.type == "inference")
        processes = 0
        if me.type == "inference":
            processes = max(1, n_inference)
            if req.refresh and self.service_processes:  # a refresh does not restart it
                processes = self.service_processes
        elif m_train is not None and self._is_me(m_train):
            processes = 1
        service = self._ensure_service(me, env, processes, req.api_port)
        try:
            members = self._ready_node(req, target, cluster_master)
        except BaseException:
            if not gate_was_open:  # they never passed the gate: as if never started
                for name in self.supervisor.names():
                    self.supervisor.stop(name)
                self.service_processes = 0
            raise
        open_gate(self.gate)
        log.info("initial: node ready, start gate open")
        self.cluster_node = target or self.node.name
        if members is None:  # for the answer, once the processes are on their way
            members = self._members()
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
            rabbit_cluster=members,
            probe=probe.method,
        )

    def _ready_node(
        self, req: InitialRequest, target: str | None, cluster_master: MachineInfo | None
    ) -> list[str] | None:
        """Step iii: the node running, in the cluster of ``target``, with the broker user where
        this node is the cluster's master. Each rabbitmqctl call starts an Erlang VM (seconds on
        a busy machine): the members are read once before a join (the join reuses them); the
        members when already known (else None)."""
        if not port_open(self.node.amqp_port):  # stopped by `cluster down`, say
            self._ensure_node()
        if target is not None and target != self.node.name:
            assert cluster_master is not None
            known = self._members()
            if target in known:
                return known
            self._join(req, target, cluster_master, known)
        elif self.settings.broker_user != "guest":
            self._ensure_user()
        return None

    def _join(
        self, req: InitialRequest, target: str, master: MachineInfo, members: list[str]
    ) -> None:
        """Step iii, retried: a join can fail for a moment (the master's node busy, a port not
        free yet); a refusal (a node that is not ours) is not retried. ``members``, as just read
        (empty if the node did not answer), spare the first try reading them again."""
        cookie = self._cluster_cookie(req, master)
        attempts = self.settings.join_attempts
        for attempt in range(1, attempts + 1):
            try:
                known = members if attempt == 1 and members else None
                self.node.join(target, cookie, allow_reset=self.settings.adopt_node, members=known)
                return
            except Unavailable as exc:
                if attempt == attempts:
                    raise
                log.warning(
                    "joining %s failed (try %d of %d): %s", target, attempt, attempts, exc.message
                )
                time.sleep(JOIN_RETRY_S * attempt)

    def _ensure_user(self) -> None:
        """The broker user of workers and services, on the cluster master's node (once per
        password: each ``rabbitmqctl`` call costs seconds)."""
        user, password = self.settings.broker_user, self.settings.broker_secret()
        key = (self.node.name, user, cookie_hash(password))
        if self._user_ready != key:
            self.node.ensure_user(user, password)
            self._user_ready = key

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
        with AgentClient.of(master, self.token, verify=client_tls(self.settings.tls_ca)) as a:
            return a.cookie().get_secret_value()

    def _broker_url(self, host: str, port: int) -> str:
        s = self.settings
        auth = f"{quote(s.broker_user, safe='')}:{quote(s.broker_secret(), safe='')}"
        where = f"[{host}]" if ":" in host else host
        scheme = "amqps" if s.broker_tls else "amqp"
        return f"{scheme}://{auth}@{where}:{port}//"

    def _child_env(self, req: InitialRequest, cluster_masters: list[MachineInfo]) -> dict[str, str]:
        """Workers' and service's environment: local node first, the masters' as failover.

        Exactly the secrets they need (broker and database URLs), in the agent's environment
        (production stays production); never the cluster token, the cookie or the agent's own
        settings."""
        urls = [self._broker_url("127.0.0.1", self.node.amqp_port)]
        for m in cluster_masters:
            if not self._is_me(m):
                url = self._broker_url(m.ip, m.amqp_port)
                if url not in urls:
                    urls.append(url)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LABELLOOP_AGENT_", "LABELLOOP_CLUSTER_", "RABBITMQ_"))
        }
        env |= {
            GATE_ENV: str(self.gate.resolve()),
            "LABELLOOP_BROKER_URL": ";".join(urls),
            "LABELLOOP_DATA_DIR": str(Path(req.task_datastore_path).resolve()),
            "LABELLOOP_JOBS": "celery",
            "LABELLOOP_ENVIRONMENT": self.environment,
        }
        if self.machine is not None:
            # Distributed training: this machine's ranks and rendezvous store listen here.
            env.setdefault("LABELLOOP_TRAIN_RDZV_HOST", self.machine.ip)
        if self.settings.broker_tls:
            assert self.settings.tls_ca is not None
            env["LABELLOOP_BROKER_CA"] = str(self.settings.tls_ca.resolve())
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
        self.service_processes = processes
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
        except (Unavailable, ValueError) as exc:
            log.warning("cluster status of %s: %s", self.node.name, exc)
            return []

    # -- status, rabbit, stop, leave ---------------------------------------------------------

    def status(self, rabbit: bool = True) -> AgentStatus:
        """What this agent knows. ``rabbit=False`` (the coordinator while processes settle, once
        a second) leaves out the node's members, a rabbitmqctl call (an Erlang VM, seconds of
        CPU): ``rabbit_cluster`` is empty, ``rabbit_running`` only says its AMQP port is open."""
        masters_: dict[str, str] = {}
        if self.master_train:
            masters_["train"] = self.master_train
        if self.master_inference:
            masters_["inference"] = self.master_inference
        members = self._members() if rabbit else []
        return AgentStatus(
            machine=self.info(),
            role=self.role,
            good=[m.ip for m in self.good],
            bad=[m.ip for m in self.bad],
            masters=masters_,
            workers=self.supervisor.status(),
            rabbit_cluster=members,
            rabbit_running=bool(members) if rabbit else port_open(self.node.amqp_port),
            cluster_node=self.cluster_node,
            service=self.service,
            stopped=self.stopped,
            initial_error=self.initial_error,
        )

    def rabbit(self) -> RabbitStatus:
        """The RabbitMQ cluster as this machine's node sees it, with its queues."""
        raw = self.node.cluster_status()
        try:
            queues = self.node.queues()
        except (Unavailable, ValueError) as exc:
            log.warning("queues of %s: %s", self.node.name, exc)
            queues = []
        partitions = raw.get("partitions")
        alarms = raw.get("alarms")
        return RabbitStatus(
            node=self.node.name,
            running_nodes=sorted(str(n) for n in _as_list(raw.get("running_nodes"))),
            disk_nodes=sorted(str(n) for n in _as_list(raw.get("disk_nodes"))),
            partitions=partitions if isinstance(partitions, dict) else {},
            alarms=alarms if isinstance(alarms, list) else [],
            queues=queues,
        )

    def stop(self, rabbit: bool = True) -> dict[str, Any]:
        """Stop the workers and service this agent started, and its node if it started it; the
        hosts file's managed block goes too (the host is left as it was found)."""
        with self._lock:
            names = self.supervisor.names()
            self.supervisor.stop_all()
            self.supervisor = Supervisor(scrub=self.scrub)
            close_gate(self.gate)
            hosts = self._remove_hosts_block()
            stopped_node = False
            if rabbit and self.node.started_by_us:
                self.node.stop()
                stopped_node = True
            self.service, self.service_processes, self.stopped = None, 0, True
            return {"stopped": names, "rabbit_stopped": stopped_node, "hosts_block_removed": hosts}

    def leave(self) -> dict[str, Any]:
        """Leave the cluster for good: stop everything, the node leaves the RabbitMQ cluster
        (reset, as a node of its own again), the hosts block goes."""
        with self._lock:
            names = self.supervisor.names()
            self.supervisor.stop_all()
            self.supervisor = Supervisor(scrub=self.scrub)
            close_gate(self.gate)
            left = False
            members = self._members()
            if len(members) > 1:
                if not (self.node.started_by_us or self.settings.adopt_node):
                    raise ConfigError(
                        f"node {self.node.name} was not started by labelloop: leaving would "
                        "reset it (allow that with --adopt-node)"
                    )
                self.node.leave()
                left = True
            hosts = self._remove_hosts_block()
            self.role, self.good, self.bad, self.cluster_node = None, [], [], None
            self.master_train = self.master_inference = ""
            self.service, self.service_processes, self.stopped = None, 0, True
            return {"stopped": names, "left_rabbit_cluster": left, "hosts_block_removed": hosts}

    def forget(self, node: str) -> bool:
        """Remove a node that is gone for good from this node's cluster."""
        with self._lock:
            return self.node.forget(node)

    def _remove_hosts_block(self) -> bool:
        try:
            return remove_block(self.settings.hosts_file)
        except OSError as exc:
            log.warning(
                "could not remove the managed block of %s: %s", self.settings.hosts_file, exc
            )
            return False

    def shutdown(self) -> None:
        """A clean stop of the agent: its processes, its hosts block, its node if asked to."""
        self.supervisor.stop_all()
        close_gate(self.gate)
        self._remove_hosts_block()
        if self.settings.stop_rabbit_on_exit and self.node.started_by_us:
            self.node.stop()

    # -- the RPC -----------------------------------------------------------------------------

    def app(self, *, register: bool = True) -> FastAPI:
        """The agent's RPC: ``/rpc/<call>``, all but ``health`` and ``/metrics`` behind the
        cluster token."""
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
                agent.shutdown()

        app = FastAPI(title="labelloop agent", lifespan=lifespan, docs_url=None, redoc_url=None)
        api_errors.install(app)
        secured = [Depends(authorised)]
        registry = CollectorRegistry()
        registry.register(ChildrenCollector(agent.supervisor_status))

        @app.get(f"{RPC_PREFIX}/health")
        def health() -> dict[str, Any]:
            return {"ok": True, "node": agent.node.name}

        @app.get("/metrics")
        def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

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
        def status(rabbit: bool = True) -> AgentStatus:
            return agent.status(rabbit)

        @app.post(f"{RPC_PREFIX}/rabbit", dependencies=secured)
        def rabbit() -> RabbitStatus:
            return agent.rabbit()

        @app.post(f"{RPC_PREFIX}/stop", dependencies=secured)
        def stop() -> dict[str, Any]:
            return agent.stop()

        @app.post(f"{RPC_PREFIX}/leave", dependencies=secured)
        def leave() -> dict[str, Any]:
            return agent.leave()

        @app.post(f"{RPC_PREFIX}/forget", dependencies=secured)
        def forget(body: ForgetRequest) -> dict[str, Any]:
            return {"node": body.node, "forgotten": agent.forget(body.node)}

        return app

    def supervisor_status(self) -> list[Any]:
        return self.supervisor.status()

    def _register_quietly(self) -> None:
        try:
            self.register()
        except (Unavailable, ConfigError) as exc:
            log.error("registration failed: %s", exc.message)


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


class ChildrenCollector(Collector):
    """Prometheus metrics of the supervised processes, read at scrape time."""

    def __init__(self, status: Any) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        labels = ["child", "role"]
        restarts = CounterMetricFamily(
            "labelloop_agent_child_restarts", "Restarts of a supervised process.", labels=labels
        )
        up = GaugeMetricFamily(
            "labelloop_agent_child_up", "1 if the process runs and is not crash-looping.",
            labels=labels,
        )  # fmt: skip
        uptime = GaugeMetricFamily(
            "labelloop_agent_child_uptime_seconds", "Seconds since it last started (0: down).",
            labels=labels,
        )  # fmt: skip
        recent = GaugeMetricFamily(
            "labelloop_agent_child_recent_restarts", "Its exits in the last 5 minutes.",
            labels=labels,
        )  # fmt: skip
        code = GaugeMetricFamily(
            "labelloop_agent_child_last_exit_code", "Its last exit code (-N: signal N).",
            labels=labels,
        )  # fmt: skip
        for w in self._status():
            key = [w.name, w.role]
            restarts.add_metric(key, w.restarts)
            up.add_metric(key, 1.0 if w.alive else 0.0)
            uptime.add_metric(key, w.uptime_s or 0.0)
            recent.add_metric(key, w.recent_restarts)
            if w.last_exit_code is not None:
                code.add_metric(key, w.last_exit_code)
        yield from (restarts, up, uptime, recent, code)


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


def run_agent(settings: AgentSettings, token: SecretStr, environment: str = "development") -> None:
    """``labelloop agent``: init, register, serve the RPC until stopped."""
    import uvicorn

    if environment != "development":
        settings.check_production()
    tls = server_tls(settings.tls_cert, settings.tls_key)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    agent = Agent(settings, token, environment)
    ip = settings.advertise_ip or local_ip(settings.registry)
    sock = bind_socket(ip, settings.port)
    machine = agent.init(sock)
    log.info(
        "agent %s on %s://%s:%s, RabbitMQ node %s (AMQP %s)",
        machine.hostname,
        machine.scheme,
        machine.ip,
        machine.port,
        machine.rabbit_node,
        machine.amqp_port,
    )
    config = uvicorn.Config(agent.app(), log_level="warning", access_log=False, **tls)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["Agent", "AgentSettings", "check_token", "cookie_hash", "run_agent"]
