"""The coordinator: the seed's registration address, and the operator's one place to run ``initial``.

Agents register here when they start (``POST /register``). An operator gives roles, by count or
with a machines file in the seed's ``machines_info`` shape (``POST /init``); the coordinator then
takes the cluster's Erlang cookie from the inference master's agent (an authenticated call, so the
cookie never leaves the cluster's own RPC) and sends ``initial`` to every machine in parallel.
``POST /join`` initialises one machine that registered late; ``GET /status`` asks every agent at
once and shows one that does not answer as ``bad``.

State (machines, roles, the task, the last answers) is a JSON file in the state folder, written
atomically with mode 600 (it may hold a database URL with a password); it never holds the cookie.
Every call but ``GET /health`` needs the cluster token.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

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
from labelloop.datastore import write_bytes_atomic
from labelloop.errors import (
    Conflict,
    InvalidInput,
    LabelloopError,
    NotFound,
    Unauthorized,
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


class JoinRequest(BaseModel):
    """``POST /join``: initialise one registered machine into the running cluster."""

    ip: str
    type: Role = "inference"


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


class Coordinator:
    """The coordinator's logic, apart from HTTP (tests drive it directly or through the app)."""

    def __init__(
        self,
        state_dir: Path,
        token: SecretStr,
        probe_timeout_s: float = 3.0,
        initial_timeout_s: float = AgentClient.INITIAL_TIMEOUT_S,
        status_timeout_s: float = 20.0,
        service_timeout_s: float = 120.0,
    ) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE
        self.token = token
        self.probe_timeout_s = probe_timeout_s
        self.initial_timeout_s = initial_timeout_s
        self.status_timeout_s = status_timeout_s
        self.service_timeout_s = service_timeout_s
        self._lock = threading.Lock()  # the state
        self._op = threading.Lock()  # one init, join or down at a time
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

    def agent(self, machine: Registration, timeout: float | None = None) -> AgentClient:
        return AgentClient.of(machine, self.token, timeout or self.probe_timeout_s)

    # -- registration ---------------------------------------------------------------------------
    def register(self, machine: Registration) -> MachineInfo:
        """Record (or refresh, after an agent restart) a machine; its role, if any, is kept."""
        _address(machine.ip)
        with self._lock:
            old = self.state.machines.get(machine.ip)
            info = MachineInfo(**machine.model_dump(), type=old.type if old else None)
            self.state.machines[machine.ip] = info
            self.state.registered_at[machine.ip] = time.time()
            self._save()
        log.info("registered %s (%s) agent port %d", machine.ip, machine.hostname, machine.port)
        return info

    def machines(self) -> list[MachineInfo]:
        with self._lock:
            return sorted(self.state.machines.values(), key=lambda m: _address(m.ip))

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
        """Give roles, then the seed's ``initial`` on every machine at once; their answers."""
        with self._op:
            started = time.monotonic()
            machines = self.assign(request)
            task = TaskFields(**request.model_dump(include=set(TaskFields.model_fields)))
            cookie, source = self._cookie(machines)
            initial = InitialRequest(
                machines_info=machines, erlang_cookie=cookie, **task.model_dump()
            )
            log.info("initial on %d machines (cookie from %s's agent)", len(machines), source.ip)
            answers, errors = self._send_initial(machines, initial)
            with self._lock:
                chosen = {m.ip: m for m in machines}
                for ip, known in self.state.machines.items():
                    self.state.machines[ip] = chosen.get(
                        ip, known.model_copy(update={"type": None})
                    )
                for ip, m in chosen.items():  # machines from a file that never registered
                    self.state.machines.setdefault(ip, m)
                self.state.task = task
                self.state.answers = answers
                self.state.errors = errors
                self._remember_masters(answers)
                self._save()
            result = self._result(machines, answers, errors, time.monotonic() - started)
            if request.task_labels and answers:
                result["task"] = self._ensure_task(request, answers)
            return result

    def _ensure_task(
        self, request: InitRequest, answers: dict[str, InitialAnswer]
    ) -> dict[str, Any]:
        """Create the seed's task on the label-ingest service, or attach to the one of that name.

        Many tasks share one cluster: each lives in its own ``task-<id>/`` below the datastore
        path, with its own models, so a second ``init`` with another name adds a task beside it.
        """
        from labelloop.client import ApiError, Client, ClientError

        first = next(iter(answers.values()))
        ingest = answers.get(first.master_train)
        url = ingest.rpc if ingest is not None and ingest.rpc else first.rpc
        if not url:
            raise Unavailable("no machine runs a service that could create the task")
        name = request.task_name or PurePosixPath(request.task_datastore_path).name or "task"
        extra = request.task_extra_info or "multi-class"
        assert request.task_labels is not None
        try:
            with Client(url, token=os.environ.get("LABELLOOP_API_TOKEN")) as api:
                api.wait_until_up(timeout=self.service_timeout_s)
                for task in api.list_tasks():
                    if task["name"] == name:
                        return {"id": task["id"], "name": name, "created": False, "service": url}
                task = api.create_task(name, request.task_category, request.task_labels, extra)
        except ApiError as exc:
            raise InvalidInput(f"the task could not be created on {url}: {exc}") from None
        except ClientError as exc:
            raise Unavailable(f"the label-ingest service {url} did not answer: {exc}") from None
        return {"id": task["id"], "name": name, "created": True, "service": url}

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
        """Initialise one machine that registered after ``init``: it joins the running cluster."""
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
            machines = [m for m in members if m.ip != new.ip] + [new]
            cookie, source = self._cookie([m for m in machines if m.ip != new.ip])
            initial = InitialRequest(
                machines_info=machines, erlang_cookie=cookie, **task.model_dump()
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
            result = self._result([new], answers, errors, time.monotonic() - started)
            result["machines_info"] = [m.model_dump(mode="json") for m in machines]
            return result

    # -- status and down ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Every machine as its agent sees itself now; one that does not answer is ``bad``."""
        machines = self.machines()
        with self._lock:
            state = self.state.model_copy(deep=True)

        def ask(m: MachineInfo) -> AgentStatus:
            # An agent's status runs ``rabbitmqctl cluster_status`` (a second or more): a longer
            # wait than the health probe, or a busy machine would look bad.
            with self.agent(m, timeout=self.status_timeout_s) as a:
                return a.status()

        rows: list[dict[str, Any]] = []
        rabbit: list[str] = []
        for m, got in zip(machines, parallel(machines, ask), strict=True):
            row: dict[str, Any] = {
                "ip": m.ip,
                "hostname": m.hostname,
                "port": m.port,
                "type": m.type,
                "rabbit_node": m.rabbit_node,
                "answers": isinstance(got, AgentStatus),
            }
            if isinstance(got, AgentStatus):
                row |= {
                    "state": "good" if m.type else "unassigned",
                    "role": got.role,
                    "good": got.good,
                    "bad": got.bad,
                    "masters": got.masters,
                    "workers": [w.model_dump() for w in got.workers],
                    "rabbit_cluster": got.rabbit_cluster,
                    "service": got.service,
                }
                if m.ip == state.master_inference or not rabbit:
                    rabbit = got.rabbit_cluster or rabbit
            else:
                row |= {"state": "bad", "error": got.message, "workers": [], "rabbit_cluster": []}
            rows.append(row)
        return {
            "machines": rows,
            "master_train": state.master_train,
            "master_inference": state.master_inference,
            "erlang_hash": state.erlang_hash,
            "rabbit_cluster": sorted(rabbit),
            "task": state.task.model_dump() if state.task else None,
            "errors": state.errors,
        }

    def down(self) -> dict[str, Any]:
        """``stop`` on every agent: workers, services and the RabbitMQ nodes they started."""
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
                self._save()
            return {"machines": out}


def require_token(token: SecretStr) -> Callable[[Request], None]:
    """A FastAPI dependency refusing any call without the cluster token (constant-time check)."""
    expected = f"Bearer {token.get_secret_value()}".encode()

    def check(request: Request) -> None:
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise Unauthorized("missing or wrong cluster token")

    return check


def create_app(coordinator: Coordinator) -> FastAPI:
    """The coordinator's HTTP API."""
    from labelloop.api import errors as api_errors

    app = FastAPI(title="labelloop coordinator", docs_url=None, redoc_url=None)
    api_errors.install(app)
    auth = [Depends(require_token(coordinator.token))]

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "machines": len(coordinator.machines())}

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

    @app.get("/status", dependencies=auth)
    def status() -> dict[str, Any]:
        return coordinator.status()

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


def serve(host: str, port: int, state_dir: Path, token: SecretStr) -> None:
    """Run the coordinator until interrupted."""
    import uvicorn

    coordinator = Coordinator(state_dir, token)
    log.info("coordinator on http://%s:%d, state in %s", host, port, coordinator.path)
    uvicorn.run(create_app(coordinator), host=host, port=port, log_level="warning")


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
