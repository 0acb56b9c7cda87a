"""``labelloop agent``'s settings: a module of their own, light to import, so that every
``labelloop`` command (each worker and service an agent starts, ``cluster init``) builds the
agent's options without importing the agent (FastAPI, its RPC)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from labelloop.cluster.rabbit import DEFAULT_BIN
from labelloop.cluster.security import read_secret_file
from labelloop.errors import ConfigError


class AgentSettings(BaseSettings):
    """Everything machine-specific about an agent. Each field is a ``labelloop agent`` option
    (``--rabbit-node`` for ``rabbit_node``) and a ``LABELLOOP_AGENT_*`` variable; several agents
    can run on one host (the tests do). The cluster token is ``LABELLOOP_CLUSTER_TOKEN``."""

    model_config = SettingsConfigDict(env_prefix="LABELLOOP_AGENT_", extra="ignore")

    registry: str | None = Field(
        default=None, description="The coordinator's URL (http:// or https://)."
    )
    advertise_ip: str | None = Field(
        default=None, description="This machine's IP for the others; default: the IP towards "
        "the coordinator."
    )  # fmt: skip
    port: int = Field(default=0, ge=0, le=65535, description="RPC port; 0 picks a free one.")
    hostname: str | None = Field(
        default=None, description="The name other machines' hosts files give this IP; default: "
        "this machine's hostname."
    )  # fmt: skip
    rabbit_node: str | None = Field(
        default=None, description="The local RabbitMQ node; default labelloop@<short hostname>."
    )
    amqp_port: int = Field(default=5672, ge=1, le=65535, description="The node's AMQP port.")
    dist_port: int | None = Field(
        default=None, ge=1, le=65535, description="The node's Erlang distribution port; default: "
        "AMQP port + 20000."
    )  # fmt: skip
    rabbit_home: Path | None = Field(
        default=None,
        description="The node's HOME (its .erlang.cookie), with its data, logs and rabbitmq.conf "
        "below it in rabbitmq/; default: DATA_DIR/rabbit.",
    )
    rabbit_bin: Path = Field(default=DEFAULT_BIN, description="Folder of the RabbitMQ scripts.")
    rabbit_conf: Path | None = Field(
        default=None,
        description="A file of rabbitmq.conf lines added to the file the agent writes for a node "
        "it starts (memory, disk, partition handling: docs/DEPLOY.md).",
    )
    start_rabbit: bool = Field(default=True, description="Start the node if it is not running.")
    adopt_node: bool = Field(
        default=False,
        description="Allow joining a running node the agent did not start (e.g. the machine's "
        "own rabbit@host) to the cluster: joining RESETS it (users, vhosts, queues are lost).",
    )
    stop_rabbit_on_exit: bool = Field(
        default=False, description="Stop the node when the agent stops (only a node it started)."
    )
    hosts_file: Path = Field(
        default=Path("/etc/hosts"), description="Hosts file with the managed block."
    )
    data_dir: Path = Field(default=Path("labelloop-agent"), description="The agent's own folder.")
    log_dir: Path | None = Field(
        default=None, description="Where worker and service logs go; default: DATA_DIR/logs."
    )
    api_port: int = Field(
        default=8000, ge=1, le=65535, description="Port of the role service (seed step vi)."
    )
    broker_user: str = Field(
        default="guest", description="The RabbitMQ user of workers and services (not guest in "
        "production: the cluster master's agent creates it)."
    )  # fmt: skip
    broker_password: SecretStr = Field(
        default=SecretStr("guest"),
        description="Its password (LABELLOOP_AGENT_BROKER_PASSWORD, or --broker-password-file).",
    )
    broker_password_file: Path | None = Field(
        default=None, description="A file (mode 600) holding the broker password."
    )
    broker_tls: bool = Field(
        default=False,
        description="amqps://: a node the agent starts listens with TLS (--tls-cert, --tls-key) "
        "and workers verify it against --tls-ca.",
    )
    worker_concurrency: int | None = Field(
        default=None, ge=1, description="Pool processes per Celery worker (default: the worker's)."
    )
    probe_timeout_s: float = Field(default=1.0, gt=0, description="Reachability probe time-out.")
    icmp: Literal["auto", "on", "off"] = Field(
        default="auto", description="Ping as well as the TCP probe: auto, on or off."
    )
    join_attempts: int = Field(
        default=3, ge=1, le=20, description="Tries of the RabbitMQ join before initial fails."
    )
    tls_cert: Path | None = Field(
        default=None, description="Certificate (PEM) of the agent's RPC (HTTPS), and of a node "
        "it starts with --broker-tls."
    )  # fmt: skip
    tls_key: Path | None = Field(default=None, description="Its private key (PEM).")
    tls_ca: Path | None = Field(
        default=None, description="CA file to verify the coordinator, other agents and the "
        "broker by (default: the system's CAs)."
    )  # fmt: skip

    @model_validator(mode="after")
    def _tls_pieces(self) -> AgentSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.broker_tls and (self.tls_cert is None or self.tls_ca is None):
            raise ValueError("broker_tls needs tls_cert, tls_key and tls_ca")
        return self

    @property
    def node_name(self) -> str:
        return self.rabbit_node or f"labelloop@{socket.gethostname().split('.')[0]}"

    @property
    def logs(self) -> Path:
        return self.log_dir or self.data_dir / "logs"

    @property
    def rabbit_folder(self) -> Path:
        return self.rabbit_home or self.data_dir / "rabbit"

    def broker_secret(self) -> str:
        """The broker password, from its file if one is named."""
        if self.broker_password_file is not None:
            return read_secret_file(self.broker_password_file, "the broker password")
        return self.broker_password.get_secret_value()

    def check_production(self) -> None:
        """What production needs beyond development (children would refuse it later)."""
        if self.broker_user == "guest":
            raise ConfigError(
                "LABELLOOP_AGENT_BROKER_USER is RabbitMQ's guest account, which works over "
                "loopback only; set a user of your own (and its password) on every machine"
            )
        if self.broker_secret() == "guest":
            raise ConfigError("set the broker password (LABELLOOP_AGENT_BROKER_PASSWORD)")

    def rabbitmq_conf(self) -> str:
        """The rabbitmq.conf of a node the agent starts: TLS listener, log rotation, extras."""
        lines = [
            "# written by labelloop agent; add settings with --rabbit-conf",
            "log.file.rotation.size = 10485760",
            "log.file.rotation.count = 5",
        ]
        if self.broker_tls:
            assert self.tls_cert and self.tls_key and self.tls_ca
            lines += [
                "listeners.tcp = none",
                f"listeners.ssl.default = {self.amqp_port}",
                f"ssl_options.cacertfile = {self.tls_ca.resolve()}",
                f"ssl_options.certfile = {self.tls_cert.resolve()}",
                f"ssl_options.keyfile = {self.tls_key.resolve()}",
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        if self.rabbit_conf is not None:
            try:
                lines += ["", f"# from {self.rabbit_conf}", self.rabbit_conf.read_text().strip()]
            except OSError as exc:
                raise ConfigError(f"cannot read {self.rabbit_conf}: {exc.strerror}") from None
        return "\n".join(lines) + "\n"
