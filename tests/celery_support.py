"""Real processes for the cluster-mode tests: a vhost of their own on the machine's RabbitMQ, a
PostgreSQL database, ``labelloop serve --jobs celery`` and ``labelloop worker --role ...`` processes,
each in its own session so that ``kill -9`` takes a whole worker (main process and pool) at once."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from labelloop.client import Client, ClientError
from labelloop.demo import free_port
from tests.support import pg_database, terminate, wait_until

__all__ = ["HOST", "Cluster", "RabbitNode", "pg_database", "terminate", "vhost", "wait_for"]

#: :func:`tests.support.wait_until` (the one polling helper) as the cluster tests call it: their
#: conditions ask servers, so they poll less often.
wait_for = functools.partial(wait_until, poll=0.1)

HOST = socket.gethostname()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@contextmanager
def vhost(prefix: str) -> Iterator[str]:
    """A throwaway vhost on the shared broker (never touching anyone else's); yields its URL."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)


class Cluster:
    """The API and its workers as separate processes sharing a broker, a database and a folder."""

    def __init__(self, root: Path, broker_url: str, database_url: str, image_root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "LABELLOOP_BROKER_URL": broker_url,
            "LABELLOOP_DATABASE_URL": database_url,
            "LABELLOOP_DATA_DIR": str(root / "data"),
            "LABELLOOP_IMPORT_ROOTS": str(image_root),
            "LABELLOOP_JOBS": "celery",
            "LABELLOOP_LOG_LEVEL": "INFO",
        }
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.api: subprocess.Popen[bytes] | None = None
        self.url = ""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "labelloop", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def start_api(self, **env: str) -> Client:
        self.env.update(env)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.api = self._spawn("api", ["serve", "--port", str(port), "--jobs", "celery"])
        client = Client(self.url, timeout=60)
        wait_until(lambda: self._up(client), 120, "the API did not start")
        return client

    def _up(self, client: Client) -> bool:
        assert self.api is not None
        if self.api.poll() is not None:
            raise AssertionError(f"serve exited: {self.log_tail('api')}")
        try:
            client.health()
            return True
        except ClientError:
            return False

    def start_worker(self, role: str, name: str, *extra: str) -> str:
        """Start ``labelloop worker --role <role>``; returns its Celery node name."""
        node = f"{name}@{HOST}"
        self.workers[name] = self._spawn(
            name, ["worker", "--role", role, "--hostname", node, *extra]
        )
        return node

    def live_workers(self, client: Client) -> dict[str, dict[str, Any]]:
        status = client._request("GET", "/api/v1/cluster/workers")
        return {w["name"]: w for w in status["workers"]}

    def wait_workers(self, client: Client, *names: str, timeout: float = 120) -> None:
        nodes = {f"{n}@{HOST}" for n in names}

        def ready() -> bool:
            for n in names:
                proc = self.workers[n]
                if proc.poll() is not None:
                    raise AssertionError(f"worker {n} exited: {self.log_tail(n)}")
            return nodes <= set(self.live_workers(client))

        wait_until(ready, timeout, f"workers {sorted(nodes)} did not come up", poll=0.5)

    def kill9(self, name: str) -> None:
        """``kill -9`` a whole worker: its main process and its pool processes."""
        proc = self.workers[name]
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        self._stop(proc)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        terminate(proc)

    def stop(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)
        if self.api is not None:
            self._stop(self.api)
            self.api = None

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _epmd_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "epmd"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _port_pair() -> tuple[int, int]:
    """An AMQP port whose distribution port (+20000, RabbitMQ's rule) is free too."""
    for _ in range(50):
        port = free_port()
        if port + 20000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 20000))
            except OSError:
                continue
        return port, port + 20000
    raise RuntimeError("no free pair of ports")


class RabbitNode:
    """A RabbitMQ node of the test's own (never the machine's shared one), started as root with the
    real scripts, with its own node name, ports, HOME (Erlang cookie), data and log folders."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.node = f"{name}-{uuid.uuid4().hex[:6]}@localhost"
        self.port, self.dist_port = _port_pair()
        home = root / "home"
        for d in (home, root / "mnesia", root / "log"):
            d.mkdir(parents=True, exist_ok=True)
        plugins = root / "enabled_plugins"
        plugins.write_text("[].\n")
        conf = root / "rabbitmq.conf"
        # The broker's consumer time-out above the longest job (see docs/WORKERS.md).
        conf.write_text("consumer_timeout = 3600000\n")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_PID_FILE": str(root / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(conf),
        }
        self._epmd_before = _epmd_pids()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        subprocess.run(
            [str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        # `await_startup` waits for the node's boot; it needs the node's VM to be up first. Each
        # rabbitmqctl call starts an Erlang VM of its own (a second of CPU on a busy machine), so
        # it is asked once the node's VM listens on its distribution port, not every second before.
        wait_until(lambda: self._listens(self.dist_port), 120, f"{self.node} VM to start")
        wait_until(
            lambda: self.ctl("await_startup", timeout=120).returncode == 0, 120, self.node, 1
        )

    def stop(self) -> None:
        self.ctl("stop")

    def accepting(self) -> bool:
        return self._listens(self.port)

    @staticmethod
    def _listens(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def cleanup(self) -> None:
        """Stop the node, and the Erlang port mapper if this node started it."""
        self.stop()
        for pid in _epmd_pids() - self._epmd_before:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
