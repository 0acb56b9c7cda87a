"""Messages between agents, the coordinator and the CLI (HTTP + JSON, pydantic-checked).

The shapes follow the seed's ``manager_rpc``: ``machines_info`` entries, the ``initial`` request
and its answer. Two changes from the seed, both for security: the Erlang cookie travels only inside
authenticated calls (``InitialRequest.erlang_cookie``, the agent's ``/rpc/cookie``) and answers carry
``erlang_hash`` (sha256 of the cookie) instead of the cookie, enough to check that all nodes agree.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

Role = Literal["train", "inference"]
ROLES: tuple[Role, ...] = ("train", "inference")

# The agent RPC lives under this prefix; every call but ``health`` needs the cluster token.
RPC_PREFIX = "/rpc"
#: A RabbitMQ node name (``name@host``): it goes into rabbitmqctl arguments and an ``eval``.
NODE_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+@[A-Za-z0-9_.\-]+$"
TOKEN_HEADER = "Authorization"  # noqa: S105 - a header name, not a secret


def cookie_hash(cookie: str) -> str:
    """The sha256 hex of an Erlang cookie: what answers and logs show instead of the cookie."""
    return hashlib.sha256(cookie.encode()).hexdigest()


def bearer(token: str) -> dict[str, str]:
    """The header an RPC client sends with the cluster token."""
    return {TOKEN_HEADER: f"Bearer {token}"}


class Registration(BaseModel):
    """What an agent tells the coordinator about its machine (``machines_info`` without a role)."""

    hostname: str
    ip: str
    port: int = Field(description="The agent's RPC port on ``ip``.")
    erlang_hash: str = Field(description="sha256 hex of the machine's Erlang cookie.")
    rabbit_node: str = Field(
        pattern=NODE_NAME_PATTERN,
        description="The local RabbitMQ node's name, e.g. ll-inf1@localhost.",
    )
    amqp_port: int
    dist_port: int
    scheme: Literal["http", "https"] = Field(
        default="http", description="https when the agent's RPC has a TLS certificate."
    )

    @property
    def rpc_url(self) -> str:
        """Base URL of the agent's RPC."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{self.scheme}://{host}:{self.port}{RPC_PREFIX}"


class MachineInfo(Registration):
    """One entry of the seed's ``machines_info``: a registered machine and its role."""

    type: Role | None = None

    def registration(self) -> Registration:
        """The same machine without its role."""
        return Registration(**self.model_dump(exclude={"type"}))


class InitialRequest(BaseModel):
    """The seed's ``initial`` call: the machines with roles, and the task the cluster serves."""

    machines_info: list[MachineInfo]
    task_category: str
    task_extra_info: str = ""
    task_datastore_path: str
    erlang_cookie: SecretStr | None = Field(
        default=None,
        description="The cluster's cookie (from the inference master's agent), for nodes that join.",
    )
    database_url: str | None = None
    api_port: int | None = Field(
        default=None, description="Port of the role service started in step vi (default: agent's)."
    )
    cluster_node: str | None = Field(
        default=None,
        pattern=NODE_NAME_PATTERN,
        description="A node of the running cluster (join, refresh): a machine elected master "
        "that is not in the cluster yet joins it there instead of staying alone.",
    )
    refresh: bool = Field(
        default=False,
        description="A refresh after another machine joined or left: probe, hosts file, masters "
        "and missing pieces as in any initial, but a running service keeps its process count.",
    )

    def wire(self) -> dict[str, object]:
        """The JSON body to send: the cookie revealed (pydantic masks ``SecretStr`` otherwise).

        Only for the authenticated ``POST /rpc/initial``; never log the result.
        """
        body = self.model_dump(mode="json")
        body["erlang_cookie"] = (
            self.erlang_cookie.get_secret_value() if self.erlang_cookie is not None else None
        )
        return body


class InitialAnswer(BaseModel):
    """The seed's answer to ``initial``, plus what the cluster status needs."""

    rpc: str = Field(description="URL of the role service started in step vi ('' if none).")
    bad_machines_info: list[MachineInfo]
    good_machines_info: list[MachineInfo]
    master_train: str = Field(description="IP of the train master ('' if no good train machine).")
    master_inference: str = Field(description="IP of the inference master ('' if none).")
    erlang_hash: str
    workers: list[str] = Field(default_factory=list, description="Celery hostnames supervised.")
    rabbit_cluster: list[str] = Field(default_factory=list, description="Running nodes seen.")
    probe: str = Field(default="tcp", description="'icmp' or 'tcp': the reachability probe used.")


class CookieAnswer(BaseModel):
    """``POST /rpc/cookie``: the only place the cookie leaves its machine."""

    cookie: SecretStr


ChildState = Literal["running", "restarting", "crash-looping"]


class WorkerStatus(BaseModel):
    """One supervised process (Celery worker or role service) on an agent."""

    name: str
    role: str
    pid: int | None = Field(description="Its PID while it runs.")
    alive: bool = Field(description="Running and not crash-looping.")
    restarts: int = Field(description="Restarts since the agent started it.")
    state: ChildState = "running"
    uptime_s: float | None = Field(default=None, description="Seconds up (None: not running).")
    recent_restarts: int = Field(default=0, description="Exits in the last 5 minutes.")
    last_exit_code: int | None = Field(
        default=None, description="Its last exit code (negative: killed by that signal)."
    )
    log_file: str = ""
    log_tail: list[str] = Field(
        default_factory=list, description="The last lines of its latest run, when not running."
    )


class AgentStatus(BaseModel):
    """``POST /rpc/status``: what one agent knows after ``initial`` (empty lists before)."""

    machine: Registration
    role: Role | None = None
    good: list[str] = Field(default_factory=list, description="IPs of good machines.")
    bad: list[str] = Field(default_factory=list, description="IPs of bad machines.")
    masters: dict[str, str] = Field(default_factory=dict, description="train/inference -> IP.")
    workers: list[WorkerStatus] = Field(default_factory=list)
    rabbit_cluster: list[str] = Field(default_factory=list, description="Running nodes seen.")
    rabbit_running: bool = Field(default=True, description="Whether the local node answers.")
    cluster_node: str | None = Field(
        default=None, description="The cluster master's node this machine's node belongs with."
    )
    service: str | None = None
    stopped: bool = Field(default=False, description="Stopped by `cluster down` (or never run).")
    initial_error: str | None = Field(
        default=None, description="Why the last initial failed (None: it succeeded)."
    )


class RabbitStatus(BaseModel):
    """``POST /rpc/rabbit``: the RabbitMQ cluster as one of its nodes sees it."""

    node: str
    running_nodes: list[str] = Field(default_factory=list)
    disk_nodes: list[str] = Field(default_factory=list)
    partitions: dict[str, Any] = Field(default_factory=dict)
    alarms: list[Any] = Field(default_factory=list)
    queues: list[dict[str, Any]] = Field(default_factory=list)
