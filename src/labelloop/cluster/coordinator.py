"""The coordinator: the seed's registration address, and the operator's one place to run ``initial``.

Agents register here when they start (``POST /register``). An operator gives roles, by count or
with a machines file in the seed's ``machines_info`` shape (``POST /init``); the coordinator then
takes the cluster's Erlang cookie from the inference master's agent (an authenticated call, so the
cookie never leaves the cluster's own RPC) and sends ``initial`` to every machine in parallel.
``POST /join`` initialises one machine that registered late; ``GET /status`` asks every agent at
once and shows one that does not answer as ``bad``.

State (machines, roles, the task, the last answers) is a JSON file in the state folder, written
atomically with mode 600 (it may hold a database URL with a password, which no answer shows); it
never holds the cookie. ``GET /status`` gives every machine's state and the cluster's verdict
(:mod:`labelloop.cluster.health`); ``GET /health`` (no token, for monitoring) the verdict alone,
``GET /metrics`` the same for Prometheus. Every other call needs the cluster token.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from labelloop.api import errors as api_errors
from labelloop.client import ApiError, Client, ClientError
from labelloop.cluster import health
from labelloop.cluster.agent import SERVICE_NAME
from labelloop.cluster.client import AgentClient
from labelloop.cluster.election import elect
from labelloop.cluster.protocol import (
    ROLES,
    AgentStatus,
    InitialAnswer,
    InitialRequest,
    MachineInfo,
    Registration,
    Role,
)
from labelloop.cluster.security import check_token, redact_url
from labelloop.datastore import write_bytes_atomic
from labelloop.errors import (
    Conflict,
    InvalidInput,
    LabelloopError,
    NotFound,
    Unavailable,
)

log = logging.getLogger(__name__)

STATE_FILE = "coordinator.json"
T = TypeVar("T")
R = TypeVar("R")


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        raise InvalidInput(f"not an IP address: {ip!r}") from None


def parallel(items: list[T], call: Callable[[T], R]) -> list[R | LabelloopError]:
    """``call`` on every item at once; a labelloop error is returned in the item's place."""

    def guarded(item: T) -> R | LabelloopError:
        try:
            return call(item)
        except LabelloopError as exc:
            return exc

    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
        return list(pool.map(guarded, items))


class MachineEntry(BaseModel):
    """One entry of a machines file: the seed's ``machines_info`` shape; only ``ip`` and ``type``
    are needed for a registered machine (the rest comes from its registration)."""

    ip: str
    type: Role
    hostname: str | None = None
    port: int | None = None
    erlang_hash: str | None = None
    rabbit_node: str | None = None
    amqp_port: int | None = None
    dist_port: int | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)  # a ValueError here is a validation error (422)
        return value


class TaskFields(BaseModel):
    """What ``initial`` passes on about the task the cluster serves."""

    task_category: str = Field(min_length=1)
    task_extra_info: str = ""
    task_datastore_path: str = Field(min_length=1)
    database_url: str | None = None
    api_port: int | None = Field(default=None, ge=1, le=65535)


class InitRequest(TaskFields):
    """``POST /init``: roles by count (in address order of the registered machines) or a file.

    With ``task_labels``, the task itself is created on the label-ingest service once the
    cluster serves (or attached, when a task of that name exists): ``task_name``, default the last
    folder of ``task_datastore_path``; category and extra from the seed's two fields.
    """

    train: int | None = Field(default=None, ge=0)
    inference: int | None = Field(default=None, ge=0)
    machines_info: list[MachineEntry] | None = None
    task_name: str | None = Field(default=None, min_length=1, max_length=200)
    task_labels: list[str] | None = Field(default=None, min_length=1)
    refresh: bool = Field(
        default=False,
        description="Keep roles and task; bring every machine's view and hosts file up to date.",
    )


class JoinRequest(BaseModel):
    """``POST /join``: initialise one registered machine into the running cluster."""

    ip: str
    type: Role = "inference"


class LeaveRequest(BaseModel):
    """``POST /leave``: remove a machine from the cluster for good."""

    ip: str


class State(BaseModel):
    """What the coordinator remembers across restarts (never a cookie)."""

    machines: dict[str, MachineInfo] = Field(default_factory=dict)
    registered_at: dict[str, float] = Field(default_factory=dict)
    task: TaskFields | None = None
    answers: dict[str, InitialAnswer] = Field(default_factory=dict)
    errors: dict[str, str] = Field(default_factory=dict)
    master_train: str = ""
    master_inference: str = ""
    erlang_hash: str = ""
    down: bool = Field(default=False, description="Stopped by `cluster down` since the last init.")


class Coordinator:
    """The coordinator's logic, apart from HTTP (tests drive it directly or through the app)."""

    #: After ``initial``, how long every child must have been up for the machines to count as
    #: settled; a child that exits meanwhile ends the wait at once (its log is in the answer).
    SETTLE_S = 10.0
    #: How long a verdict is reused by ``GET /health`` and ``/metrics`` (they ask every agent).
    HEALTH_TTL_S = 5.0

    def __init__(
        self,
        state_dir: Path,
        token: SecretStr,
        probe_timeout_s: float = 3.0,
        initial_timeout_s: float = AgentClient.INITIAL_TIMEOUT_S,
        status_timeout_s: float = 20.0,
        service_timeout_s: float = 120.0,
        settle_timeout_s: float = 60.0,
        verify: ssl.SSLContext | None = None,
        auto_rejoin: bool = True,
    ) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE
        self.token = token
        self.probe_timeout_s = probe_timeout_s
        self.initial_timeout_s = initial_timeout_s
        self.status_timeout_s = status_timeout_s
        self.service_timeout_s = service_timeout_s
        self.settle_timeout_s = settle_timeout_s
        self.verify = verify
        #: A machine with a role that registers again is initialised again (see register).
        self.auto_rejoin = auto_rejoin
        self.rejoins: dict[str, threading.Thread] = {}  # the latest rejoin per machine
        self._lock = threading.Lock()  # the state
        self._op = threading.Lock()  # one init, join, leave or down at a time
        self._health: tuple[float, dict[str, Any]] | None = None
        self._health_lock = threading.Lock()
        self.state = self._load()

    # -- state ----------------------------------------------------------------------------------
    def _load(self) -> State:
        if not self.path.exists():
            return State()
        try:
            return State.model_validate_json(self.path.read_text())
        except (ValidationError, OSError) as exc:
            raise LabelloopError(f"cannot read the coordinator state {self.path}: {exc}") from None

    def _save(self) -> None:
        write_bytes_atomic(self.path, self.state.model_dump_json(indent=2).encode(), mode=0o600)
        self._health = None

    def agent(self, machine: Registration, timeout: float | None = None) -> AgentClient:
        return AgentClient.of(
            machine, self.token, timeout or self.probe_timeout_s, verify=self.verify
        )

    # -- registration ---------------------------------------------------------------------------
    def register(self, machine: Registration) -> MachineInfo:
        """Record (or refresh, after an agent restart) a machine; its role, if any, is kept.

        A machine of the running cluster that registers again (its agent restarted, the machine
        rebooted) is initialised again at once, in the background, as a join would, so it comes
        back without an operator (:attr:`auto_rejoin`)."""
        _address(machine.ip)
        with self._lock:
            old = self.state.machines.get(machine.ip)
            info = MachineInfo(**machine.model_dump(), type=old.type if old else None)
            self.state.machines[machine.ip] = info
            self.state.registered_at[machine.ip] = time.time()
            self._save()
            rejoin = (
                self.auto_rejoin
                and info.type is not None
                and self.state.task is not None
                and not self.state.down
            )
        log.info("registered %s (%s) agent port %d", machine.ip, machine.hostname, machine.port)
        if rejoin:
            assert info.type is not None
            request = JoinRequest(ip=info.ip, type=info.type)
            thread = threading.Thread(target=self._rejoin, args=(request,), daemon=True)
            self.rejoins[info.ip] = thread
            thread.start()
        return info

    def _rejoin(self, request: JoinRequest) -> None:
        try:
            result = self.join(request)
            log.info("%s came back: initial ran again (%.1f s)", request.ip, result["seconds"])
        except LabelloopError as exc:
            log.warning("%s registered again, but initial failed: %s", request.ip, exc.message)

    def machines(self) -> list[MachineInfo]:
        with self._lock:
            return sorted(self.state.machines.values(), key=lambda m: _address(m.ip))

    def members(self) -> list[MachineInfo]:
        """The machines with a role."""
        return [m for m in self.machines() if m.type is not None]

    # -- roles ----------------------------------------------------------------------------------
    def assign(self, request: InitRequest) -> list[MachineInfo]:
        """The ``machines_info`` of an init: every machine with its role."""
        registered = {m.ip: m for m in self.machines()}
        if request.machines_info is not None:
            if request.train is not None or request.inference is not None:
                raise InvalidInput("give roles by count or by a machines file, not both")
            return [self._resolve(entry, registered) for entry in request.machines_info]
        train, inference = request.train or 0, request.inference or 0
        if train + inference == 0:
            raise InvalidInput("no machines: give --train/--inference counts or a machines file")
        ordered = list(registered.values())
        if train + inference > len(ordered):
            raise InvalidInput(
                f"{train} train + {inference} inference machines asked, {len(ordered)} registered"
            )
        as_train: Role = "train"
        as_inference: Role = "inference"
        roles = [as_train] * train + [as_inference] * inference
        return [m.model_copy(update={"type": r}) for m, r in zip(ordered, roles, strict=False)]

    @staticmethod
    def _resolve(entry: MachineEntry, registered: dict[str, MachineInfo]) -> MachineInfo:
        known = registered.get(entry.ip)
        if known is not None:
            return known.model_copy(update={"type": entry.type})
        try:
            return MachineInfo.model_validate(entry.model_dump())
        except ValidationError:
            raise InvalidInput(
                f"{entry.ip} is not registered and the machines file does not describe it fully"
            ) from None

    # -- initial --------------------------------------------------------------------------------
    def _answering(self, machines: list[MachineInfo]) -> list[MachineInfo]:
        """The machines whose agent answers its health check now."""

        def alive(m: MachineInfo) -> bool:
            with self.agent(m) as a:
                a.health()
            return True

        return [m for m, ok in zip(machines, parallel(machines, alive), strict=True) if ok is True]

    def _cookie(self, machines: list[MachineInfo]) -> tuple[SecretStr, MachineInfo]:
        """The cluster's cookie, from the agent the agents will elect as the inference master
        (the train master when there is no inference machine)."""
        up = self._answering(machines)
        source = elect(up, "inference") or elect(up, "train")
        if source is None:
            raise Unavailable("no machine of the cluster answers: nothing to initialise")
        with self.agent(source) as a:
            return a.cookie(), source

    def _send_initial(
        self, targets: list[MachineInfo], request: InitialRequest
    ) -> tuple[dict[str, InitialAnswer], dict[str, str]]:
        def call(m: MachineInfo) -> InitialAnswer:
            with self.agent(m) as a:
                return a.initial(request, timeout=self.initial_timeout_s)

        answers: dict[str, InitialAnswer] = {}
        errors: dict[str, str] = {}
        for m, got in zip(targets, parallel(targets, call), strict=True):
            if isinstance(got, InitialAnswer):
                answers[m.ip] = got
            else:
                errors[m.ip] = got.message
                log.warning("initial on %s failed: %s", m.ip, got.message)
        return answers, errors

    def init(self, request: InitRequest) -> dict[str, Any]:
        """Give roles, then the seed's ``initial`` on every machine at once; their answers, and
        the state of every child process once they settled (or one failed).

        With ``refresh``, the roles and task stay as they are and every machine brings its view,
        hosts file and missing pieces up to date (a running service is not restarted).
        """
        with self._op:
            started = time.monotonic()
            if request.refresh:
                machines = self.members()
                task = self.state.task
                if task is None or not machines:
                    raise Conflict("nothing to refresh: run `labelloop cluster init` first")
            else:
                machines = self.assign(request)
                task = TaskFields(**request.model_dump(include=set(TaskFields.model_fields)))
            cookie, source = self._cookie(machines)
            initial = InitialRequest(
                machines_info=machines,
                erlang_cookie=cookie,
                refresh=request.refresh,
                cluster_node=self._cluster_node(self.state) if request.refresh else None,
                **task.model_dump(),
            )
            log.info("initial on %d machines (cookie from %s's agent)", len(machines), source.ip)
            answers, errors = self._send_initial(machines, initial)
            with self._lock:
                if not request.refresh:
                    chosen = {m.ip: m for m in machines}
                    for ip, known in self.state.machines.items():
                        self.state.machines[ip] = chosen.get(
                            ip, known.model_copy(update={"type": None})
                        )
                    for ip, m in chosen.items():  # machines from a file that never registered
                        self.state.machines.setdefault(ip, m)
                    self.state.task = task
                    self.state.answers = {}
                    self.state.errors = {}
                self.state.answers.update(answers)
                for ip in answers:
                    self.state.errors.pop(ip, None)
                self.state.errors.update(errors)
                self.state.down = False
                self._remember_masters(answers)
                self._save()
            result = self._result(machines, answers, errors, time.monotonic() - started)
            result["failing"] = self._settle(machines, answers)
            if request.task_labels and answers:
                try:
                    result["task"] = self._ensure_task(request, answers)
                except Unavailable as exc:
                    result["task_error"] = exc.message
                    result["failing"] |= self._failing_children(machines, answers)
            result["seconds"] = round(time.monotonic() - started, 3)
            return result

    def _statuses(
        self, machines: list[MachineInfo], timeout: float | None = None, *, rabbit: bool = True
    ) -> dict[str, AgentStatus | LabelloopError]:
        """Every agent's status, asked in parallel; ``rabbit=False``: only what their processes
        do (what settling reads), without the rabbitmqctl call each status otherwise makes."""

        def ask(m: MachineInfo) -> AgentStatus:
            # An agent's status runs ``rabbitmqctl cluster_status`` (a second or more): a longer
            # wait than the health probe, or a busy machine would look bad.
            with self.agent(m, timeout=timeout or self.status_timeout_s) as a:
                return a.status(rabbit=rabbit)

        return {m.ip: got for m, got in zip(machines, parallel(machines, ask), strict=True)}

    def _settle(
        self, machines: list[MachineInfo], answers: dict[str, InitialAnswer]
    ) -> dict[str, list[dict[str, Any]]]:
        """Wait until every child on the machines that answered has been up :data:`SETTLE_S`;
        stop at once when one exits (a crash at start: wrong settings, missing secret). The
        children that are not running, per machine, with their log's last lines."""
        targets = [m for m in machines if m.ip in answers]
        restarts: dict[tuple[str, str], int] = {}
        deadline = time.monotonic() + self.settle_timeout_s
        while targets:
            # Once a second while the processes start: no Erlang VM per agent per poll.
            statuses = self._statuses(targets, rabbit=False)
            settled = True
            exited: set[tuple[str, str]] = set()
            for ip, got in statuses.items():
                if not isinstance(got, AgentStatus):
                    continue
                for w in got.workers:
                    before = restarts.setdefault((ip, w.name), w.restarts)
                    young = not w.alive or (w.uptime_s or 0.0) < self.SETTLE_S
                    if (
                        w.state == "crash-looping"
                        or w.restarts > before
                        or (w.last_exit_code is not None and young)
                    ):
                        exited.add((ip, w.name))  # it exited since initial: no use waiting
                    settled = settled and not young
            if exited or settled or time.monotonic() >= deadline:
                return _failing(statuses, exited)
            time.sleep(1.0)
        return {}

    def _failing_children(
        self, machines: list[MachineInfo], answers: dict[str, InitialAnswer]
    ) -> dict[str, list[dict[str, Any]]]:
        return _failing(self._statuses([m for m in machines if m.ip in answers], rabbit=False))

    def _ensure_task(
        self, request: InitRequest, answers: dict[str, InitialAnswer]
    ) -> dict[str, Any]:
        """Create the seed's task on the label-ingest service, or attach to the one of that name.

        Many tasks share one cluster: each lives in its own ``task-<id>/`` below the datastore
        path, with its own models, so a second ``init`` with another name adds a task beside it.
        While waiting for the service, a service process that crash-loops ends the wait.
        """
        first = next(iter(answers.values()))
        ingest_ip = first.master_train if first.master_train in answers else next(iter(answers))
        ingest = answers[ingest_ip]
        url = ingest.rpc or first.rpc
        if not url:
            raise Unavailable("no machine runs a service that could create the task")
        name = request.task_name or PurePosixPath(request.task_datastore_path).name or "task"
        extra = request.task_extra_info or "multi-class"
        assert request.task_labels is not None
        try:
            with Client(url, token=os.environ.get("LABELLOOP_API_TOKEN"), timeout=30) as api:
                self._wait_for_service(api, url, self.state.machines.get(ingest_ip))
                for task in api.list_tasks():
                    if task["name"] == name:
                        return {"id": task["id"], "name": name, "created": False, "service": url}
                task = api.create_task(name, request.task_category, request.task_labels, extra)
        except ApiError as exc:
            raise InvalidInput(f"the task could not be created on {url}: {exc}") from None
        except ClientError as exc:
            raise Unavailable(f"the label-ingest service {url} did not answer: {exc}") from None
        return {"id": task["id"], "name": name, "created": True, "service": url}

    def _wait_for_service(self, api: Client, url: str, machine: MachineInfo | None) -> None:
        deadline = time.monotonic() + self.service_timeout_s
        while True:
            try:
                api.health()
                return
            except ClientError:
                if time.monotonic() > deadline:
                    raise
            if machine is not None:
                try:
                    with self.agent(machine, timeout=self.status_timeout_s) as a:
                        service = next(
                            (w for w in a.status(rabbit=False).workers if w.name == SERVICE_NAME),
                            None,
                        )
                except LabelloopError:
                    service = None
                if service is not None and service.state == "crash-looping":
                    raise Unavailable(
                        f"the label-ingest service {url} is crash-looping (last exit code "
                        f"{service.last_exit_code}; log {service.log_file})"
                    )
            time.sleep(1.0)

    def _remember_masters(self, answers: dict[str, InitialAnswer]) -> None:
        if answers:
            first = next(iter(answers.values()))
            self.state.master_train = first.master_train
            self.state.master_inference = first.master_inference
            self.state.erlang_hash = first.erlang_hash

    @staticmethod
    def _result(
        machines: list[MachineInfo],
        answers: dict[str, InitialAnswer],
        errors: dict[str, str],
        seconds: float,
    ) -> dict[str, Any]:
        views = {
            (
                a.master_train,
                a.master_inference,
                a.erlang_hash,
                tuple(sorted(m.ip for m in a.good_machines_info)),
            )
            for a in answers.values()
        }
        first = next(iter(answers.values()), None)
        return {
            "machines_info": [m.model_dump(mode="json") for m in machines],
            "answers": {ip: a.model_dump(mode="json") for ip, a in answers.items()},
            "errors": errors,
            "master_train": first.master_train if first else "",
            "master_inference": first.master_inference if first else "",
            "erlang_hash": first.erlang_hash if first else "",
            # Every answering agent saw the same masters, cookie and good machines.
            "consistent": len(views) == 1,
            "seconds": round(seconds, 3),
        }

    def join(self, request: JoinRequest) -> dict[str, Any]:
        """Initialise one machine that registered after ``init``: it joins the running cluster;
        then every other machine refreshes its view (good machines, hosts file, masters)."""
        with self._op:
            started = time.monotonic()
            with self._lock:
                task = self.state.task
                new = self.state.machines.get(request.ip)
                members = [m for m in self.state.machines.values() if m.type is not None]
            if task is None:
                raise Conflict("the cluster was never initialised: run `labelloop cluster init`")
            if new is None:
                raise NotFound(f"no machine registered at {request.ip}")
            new = new.model_copy(update={"type": request.type})
            others = [m for m in members if m.ip != new.ip]
            machines = sorted([*others, new], key=lambda m: _address(m.ip))
            cookie, source = self._cookie(others)
            initial = InitialRequest(
                machines_info=machines,
                erlang_cookie=cookie,
                cluster_node=self._cluster_node(self.state),
                **task.model_dump(),
            )
            log.info("initial on late machine %s (cookie from %s's agent)", new.ip, source.ip)
            answers, errors = self._send_initial([new], initial)
            with self._lock:
                self.state.machines[new.ip] = new
                self.state.answers.update(answers)
                self.state.errors.pop(new.ip, None)
                self.state.errors.update(errors)
                self._save()
            if errors:
                raise Unavailable(errors[new.ip])
            # The others refresh while the new machine's processes settle.
            refresh = initial.model_copy(update={"refresh": True})
            with ThreadPoolExecutor(max_workers=1) as pool:
                settling = pool.submit(self._settle, [new], answers)
                more, more_errors = self._send_initial(others, refresh)
                failing = settling.result()
            answers |= more
            with self._lock:
                self.state.answers.update(more)
                for ip in more:
                    self.state.errors.pop(ip, None)
                self.state.errors.update(more_errors)
                self._remember_masters(answers)
                self._save()
            result = self._result(machines, answers, more_errors, time.monotonic() - started)
            result["failing"] = failing
            return result

    def leave(self, ip: str) -> dict[str, Any]:
        """Remove a machine for good: its agent stops everything and its node leaves the RabbitMQ
        cluster (or, if it does not answer, the others forget its node); the others refresh."""
        with self._op:
            with self._lock:
                gone = self.state.machines.get(ip)
            if gone is None:
                raise NotFound(f"no machine registered at {ip}")
            out: dict[str, Any] = {"ip": ip}
            try:
                with self.agent(gone, timeout=300.0) as a:
                    out["agent"] = a.leave()
            except Unavailable as exc:
                out["agent"] = {"error": exc.message}
            remaining = [m for m in self.members() if m.ip != ip]
            if "error" in out["agent"] and gone.type is not None:
                out["forgotten_by"] = self._forget(remaining, gone.rabbit_node)
            with self._lock:
                self.state.machines.pop(ip, None)
                self.state.registered_at.pop(ip, None)
                self.state.answers.pop(ip, None)
                self.state.errors.pop(ip, None)
                self._save()
            task = self.state.task
            if remaining and task is not None:
                cookie, _ = self._cookie(remaining)
                refresh = InitialRequest(
                    machines_info=remaining,
                    erlang_cookie=cookie,
                    refresh=True,
                    cluster_node=self._cluster_node_except(ip),
                    **task.model_dump(),
                )
                answers, errors = self._send_initial(remaining, refresh)
                with self._lock:
                    self.state.answers.update(answers)
                    self.state.errors.update(errors)
                    self._remember_masters(answers)
                    self._save()
                out["refresh"] = self._result(remaining, answers, errors, 0.0)
            return out

    def _forget(self, machines: list[MachineInfo], node: str) -> str | None:
        """Ask the first answering machine to forget ``node`` (a machine gone for good)."""
        for m in machines:
            try:
                with self.agent(m, timeout=120.0) as a:
                    a.forget(node)
                return m.ip
            except LabelloopError as exc:
                log.warning("%s could not forget %s: %s", m.ip, node, exc.message)
        return None

    # -- status, health and down ----------------------------------------------------------------
    def _cluster_node(self, state: State) -> str | None:
        """The node the others joined: the inference master's (the train master's if none)."""
        master = state.machines.get(state.master_inference or state.master_train)
        return master.rabbit_node if master is not None else None

    def _cluster_node_except(self, gone: str) -> str | None:
        """A node of the running cluster other than ``gone``'s (after it left)."""
        if gone not in (self.state.master_inference, self.state.master_train):
            return self._cluster_node(self.state)
        others = sorted(
            (m for m in self.members() if m.ip != gone and m.ip in self.state.answers),
            key=lambda m: _address(m.ip),
        )
        return others[0].rabbit_node if others else None

    def status(self) -> dict[str, Any]:
        """Every machine as its agent sees itself now, its state by :mod:`health`'s rule, and the
        cluster's verdict (the exit code of ``labelloop cluster status``)."""
        machines = self.machines()
        with self._lock:
            state = self.state.model_copy(deep=True)
        cluster_node = self._cluster_node(state)
        rows: list[dict[str, Any]] = []
        rabbit: list[str] = []
        statuses = self._statuses(machines)
        for m in machines:
            got = statuses[m.ip]
            status = got if isinstance(got, AgentStatus) else None
            machine_state, problems = health.machine_state(m.type, status, cluster_node)
            row: dict[str, Any] = {
                "ip": m.ip,
                "hostname": m.hostname,
                "port": m.port,
                "type": m.type,
                "rabbit_node": m.rabbit_node,
                "answers": status is not None,
                "state": machine_state,
                "problems": problems,
            }
            if status is not None:
                row |= {
                    "role": status.role,
                    "good": status.good,
                    "bad": status.bad,
                    "masters": status.masters,
                    "workers": [w.model_dump() for w in status.workers],
                    "rabbit_cluster": status.rabbit_cluster,
                    "service": status.service,
                }
                if m.ip == state.master_inference or not rabbit:
                    rabbit = status.rabbit_cluster or rabbit
            else:
                assert isinstance(got, LabelloopError)
                row |= {"error": got.message, "workers": [], "rabbit_cluster": []}
            rows.append(row)
        verdict = health.cluster_health(
            ((r["type"], r["state"]) for r in rows),
            initialised=state.task is not None,
            stopped=state.down,
        )
        task = state.task.model_dump() if state.task else None
        if task is not None:
            task["database_url"] = redact_url(task["database_url"])
        return {
            "health": verdict.verdict.value,
            "reason": verdict.reason,
            "exit_code": verdict.exit_code,
            "machines": rows,
            "master_train": state.master_train,
            "master_inference": state.master_inference,
            "erlang_hash": state.erlang_hash,
            "rabbit_cluster": sorted(rabbit),
            "task": task,
            "errors": state.errors,
        }

    def health(self) -> dict[str, Any]:
        """The verdict of :meth:`status`, reused for :data:`HEALTH_TTL_S` (``GET /health`` and
        ``/metrics`` are polled; each status asks every agent)."""
        with self._health_lock:
            cached = self._health
            if cached is not None and time.monotonic() - cached[0] < self.HEALTH_TTL_S:
                return cached[1]
            status = self.status()
            self._health = (time.monotonic(), status)
            return status

    def down(self) -> dict[str, Any]:
        """``stop`` on every agent: workers, services, hosts blocks and the RabbitMQ nodes they
        started. The cluster is ``down`` until the next ``init``."""
        with self._op:
            machines = self.machines()

            def stop(m: MachineInfo) -> dict[str, Any]:
                with self.agent(m, timeout=120.0) as a:
                    return a.stop()

            out: dict[str, Any] = {}
            for m, got in zip(machines, parallel(machines, stop), strict=True):
                out[m.ip] = {"error": got.message} if isinstance(got, LabelloopError) else got
            with self._lock:
                self.state.answers = {}
                self.state.errors = {}
                self.state.down = True
                self._save()
            return {"machines": out}

    # -- operator's checks ----------------------------------------------------------------------
    def rabbit(self) -> dict[str, Any]:
        """The RabbitMQ cluster as the cluster master's node sees it (else the first machine
        that answers): members, partitions, alarms, queues with their replicas."""
        with self._lock:
            state = self.state.model_copy(deep=True)
        first = [state.master_inference, state.master_train]
        ordered = sorted(
            self.members(),
            key=lambda m: (m.ip not in first, first.index(m.ip) if m.ip in first else 0),
        )
        errors: dict[str, str] = {}
        for m in ordered:
            try:
                with self.agent(m, timeout=self.status_timeout_s * 3) as a:
                    got = a.rabbit()
            except LabelloopError as exc:
                errors[m.ip] = exc.message
                continue
            expected = sorted(x.rabbit_node for x in self.members())
            return {
                "asked": m.ip,
                **got.model_dump(mode="json"),
                "expected_nodes": expected,
                "missing_nodes": sorted(set(expected) - set(got.running_nodes)),
                "errors": errors,
            }
        raise Unavailable(f"no machine's agent answered: {errors or 'no machine has a role'}")

    def workers(self) -> dict[str, Any]:
        """The live Celery workers and queue depths, as a role service sees them."""
        with self._lock:
            answers = dict(self.state.answers)
        services = [a.rpc for a in answers.values() if a.rpc]
        errors: dict[str, str] = {}
        for url in services:
            try:
                with Client(url, token=os.environ.get("LABELLOOP_API_TOKEN"), timeout=30) as api:
                    got: dict[str, Any] = api.cluster_workers()
                return {"service": url, **got, "errors": errors}
            except ClientError as exc:
                errors[url] = str(exc)
        raise Unavailable(f"no role service answered: {errors or 'the cluster has none'}")


def _failing(
    statuses: dict[str, AgentStatus | LabelloopError], exited: set[tuple[str, str]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The children that are not running (or ``exited`` lately), per machine: what a failed
    init must show."""
    out: dict[str, list[dict[str, Any]]] = {}
    for ip, got in statuses.items():
        if not isinstance(got, AgentStatus):
            continue
        bad = [
            w.model_dump(include={"name", "role", "state", "last_exit_code", "recent_restarts",
                                  "log_file", "log_tail"})
            for w in got.workers
            if not w.alive or (ip, w.name) in (exited or set())
        ]  # fmt: skip
        if bad:
            out[ip] = bad
    return out


def require_token(token: SecretStr) -> Callable[[Request], None]:
    """A FastAPI dependency refusing any call without the cluster token (constant-time check)."""

    def check(request: Request) -> None:
        check_token(token, request.headers.get("authorization"))

    return check


class ClusterCollector(Collector):
    """Prometheus metrics of the cluster: its verdict, machine states, child restarts."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterable[Metric]:
        status = self.coordinator.health()
        verdict = GaugeMetricFamily(
            "labelloop_cluster_health", "0 healthy, 1 degraded, 2 down.", labels=[]
        )
        verdict.add_metric([], list(health.Verdict).index(health.Verdict(status["health"])))
        machines = GaugeMetricFamily(
            "labelloop_cluster_machines", "Machines by state.", labels=["state"]
        )
        for st in ("good", "failing", "bad", "down", "unassigned"):
            machines.add_metric([st], sum(1 for r in status["machines"] if r["state"] == st))
        labels = ["machine", "child", "role"]
        restarts = CounterMetricFamily(
            "labelloop_cluster_child_restarts", "Restarts of a supervised process.", labels=labels
        )
        recent = GaugeMetricFamily(
            "labelloop_cluster_child_recent_restarts", "Its exits in the last 5 minutes.",
            labels=labels,
        )  # fmt: skip
        up = GaugeMetricFamily(
            "labelloop_cluster_child_up", "1 if it runs and is not crash-looping.", labels=labels
        )
        for row in status["machines"]:
            for w in row.get("workers", []):
                key = [row["ip"], w["name"], w["role"]]
                restarts.add_metric(key, w["restarts"])
                recent.add_metric(key, w["recent_restarts"])
                up.add_metric(key, 1.0 if w["alive"] else 0.0)
        yield from (verdict, machines, restarts, recent, up)


def create_app(coordinator: Coordinator) -> FastAPI:
    """The coordinator's HTTP API."""
    app = FastAPI(title="labelloop coordinator", docs_url=None, redoc_url=None)
    api_errors.install(app)
    auth = [Depends(require_token(coordinator.token))]
    registry = CollectorRegistry()
    registry.register(ClusterCollector(coordinator))

    @app.get("/health")
    def health_() -> JSONResponse:
        """The cluster's verdict (as ``labelloop cluster status`` exits): 200 healthy or
        degraded, 503 down. No token: monitoring polls it."""
        status = coordinator.health()
        body = {
            "status": status["health"],
            "reason": status["reason"],
            "machines": {
                st: sum(1 for r in status["machines"] if r["state"] == st)
                for st in ("good", "failing", "bad", "down", "unassigned")
            },
        }
        return JSONResponse(body, status_code=health.HTTP_CODES[health.Verdict(status["health"])])

    @app.get("/livez")
    def livez() -> dict[str, Any]:
        """The coordinator itself answers (asks no agent)."""
        return {"ok": True, "machines": len(coordinator.machines())}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/register", dependencies=auth)
    def register(machine: Registration) -> dict[str, Any]:
        return coordinator.register(machine).model_dump(mode="json")

    @app.get("/machines", dependencies=auth)
    def machines() -> list[dict[str, Any]]:
        return [m.model_dump(mode="json") for m in coordinator.machines()]

    @app.post("/init", dependencies=auth)
    def init(request: InitRequest) -> dict[str, Any]:
        return coordinator.init(request)

    @app.post("/join", dependencies=auth)
    def join(request: JoinRequest) -> dict[str, Any]:
        return coordinator.join(request)

    @app.post("/leave", dependencies=auth)
    def leave(request: LeaveRequest) -> dict[str, Any]:
        return coordinator.leave(request.ip)

    @app.get("/status", dependencies=auth)
    def status() -> dict[str, Any]:
        return coordinator.status()

    @app.get("/rabbit", dependencies=auth)
    def rabbit() -> dict[str, Any]:
        return coordinator.rabbit()

    @app.get("/workers", dependencies=auth)
    def workers() -> dict[str, Any]:
        return coordinator.workers()

    @app.post("/down", dependencies=auth)
    def down() -> dict[str, Any]:
        return coordinator.down()

    return app


def load_machines_file(path: Path) -> list[MachineEntry]:
    """A machines file: a JSON list of ``machines_info`` entries, or ``{"machines_info": [...]}``."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the machines file {path}: {exc}") from None
    if isinstance(raw, dict):
        raw = raw.get("machines_info")
    if not isinstance(raw, list):
        raise InvalidInput(f"{path}: expected a list of machines_info entries")
    try:
        return [MachineEntry.model_validate(e) for e in raw]
    except ValidationError as exc:
        raise InvalidInput(f"{path}: {exc.errors()[0]['msg']}") from None


def serve(
    host: str,
    port: int,
    state_dir: Path,
    token: SecretStr,
    tls: dict[str, str] | None = None,
    verify: ssl.SSLContext | None = None,
) -> None:
    """Run the coordinator until interrupted (HTTPS with ``tls``: uvicorn's certificate
    arguments; ``verify``: how to check agents that speak HTTPS)."""
    import uvicorn

    coordinator = Coordinator(state_dir, token, verify=verify)
    log.info("coordinator on %s:%d, state in %s", host, port, coordinator.path)
    uvicorn.run(create_app(coordinator), host=host, port=port, log_level="warning", **(tls or {}))  # type: ignore[arg-type]


__all__ = [
    "ROLES",
    "Coordinator",
    "InitRequest",
    "JoinRequest",
    "MachineEntry",
    "create_app",
    "load_machines_file",
    "serve",
]
