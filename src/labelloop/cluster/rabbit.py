"""This machine's RabbitMQ node: start or find it, its Erlang cookie, and the seed's join step.

A node is named (``rabbit@host`` in production, ``ll-inf1@localhost`` in tests), has its own AMQP
and distribution ports, and its own HOME (which holds ``.erlang.cookie``, Erlang's rule). With a
``base`` folder, its data, logs and pid file live there too, so several nodes run on one host.
The scripts in ``/usr/lib/rabbitmq/bin`` are called directly: Debian's wrappers in ``/usr/sbin``
switch to the ``rabbitmq`` user and reset HOME. Every command is an argument list; the cookie is
never on a command line or in a log, and command output is scrubbed of it before it is shown.

A node the agent did not start (the machine's own ``rabbit@host``, say) is the operator's: joining
a cluster resets a node (its users, vhosts and queues are gone), so :meth:`RabbitNode.join` refuses
to do that to such a node unless told to (``allow_reset``). Whether the agent started the node is
kept in a marker file, so an agent that restarts still knows its own node. A cookie file that is
rewritten keeps its owner (the ``rabbitmq`` user must still read it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from labelloop.cluster.protocol import NODE_NAME_PATTERN, cookie_hash
from labelloop.datastore import write_bytes_atomic
from labelloop.errors import ConfigError, InvalidInput, Unavailable

log = logging.getLogger(__name__)

DEFAULT_BIN = Path("/usr/lib/rabbitmq/bin")
NODE_NAME = re.compile(NODE_NAME_PATTERN)
COOKIE_NAME = ".erlang.cookie"


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` atomically with mode 600 (created so, never widened); a file
    that existed keeps its owner and group."""
    try:
        before = path.stat()
    except FileNotFoundError:
        before = None
    write_bytes_atomic(path, value.encode(), mode=0o600)
    if before is not None:
        keep_owner(path, before.st_uid, before.st_gid)


def keep_owner(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` back to ``uid:gid`` (only root may; anyone else wrote it as that owner)."""
    st = path.stat()
    if (st.st_uid, st.st_gid) != (uid, gid) and os.geteuid() == 0:
        os.chown(path, uid, gid)


def new_cookie() -> str:
    """A fresh cookie in Erlang's own style (20 upper-case letters), from a secure source."""
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def epmd_pids() -> set[int]:
    """PIDs of running ``epmd`` daemons (tests end the one they caused to start, by PID)."""
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "epmd":
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live beam process (not gone, not a zombie, not a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return "beam" in stat.split(")")[0] and stat.split(")")[1].split()[0] != "Z"


@dataclass
class RabbitNode:
    """One RabbitMQ node this agent manages (or found already running)."""

    name: str
    amqp_port: int = 5672
    dist_port: int = 25672
    home: Path = Path("/var/lib/rabbitmq")
    #: Folder for data (mnesia), logs and pid file; None: the installation's defaults.
    base: Path | None = None
    bin_dir: Path = DEFAULT_BIN
    #: A file that says "the agent started this node" (so it survives an agent restart).
    marker: Path | None = None
    #: ``rabbitmq.conf`` for a node started with its own ``base`` (None: none written).
    config: str | None = None
    started_by_us: bool = field(default=False, init=False)

    # -- files -------------------------------------------------------------------------------

    @property
    def cookie_file(self) -> Path:
        return self.home / COOKIE_NAME

    def read_cookie(self) -> str:
        try:
            return self.cookie_file.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"no Erlang cookie at {self.cookie_file}") from None

    def ensure_cookie(self) -> str:
        """The node's cookie; a new one (mode 600) if it has none yet."""
        if not self.cookie_file.exists():
            write_secret(self.cookie_file, new_cookie())
        return self.read_cookie()

    def write_cookie(self, cookie: str) -> None:
        write_secret(self.cookie_file, cookie)

    def cookie_hash(self) -> str:
        return cookie_hash(self.read_cookie())

    # -- commands ----------------------------------------------------------------------------

    def _exe(self, name: str) -> str:
        path = self.bin_dir / name
        if path.exists():
            return str(path)
        found = shutil.which(name)
        if found is None:
            raise ConfigError(f"{name} not found in {self.bin_dir} or on PATH")
        return found

    @property
    def workdir(self) -> Path:
        """Where the node's processes run: an Erlang crash leaves its dumps there, not in the
        caller's folder."""
        folder = self.base or self.home
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def env(self) -> dict[str, str]:
        """The environment of this node's server and of ``rabbitmqctl`` calls on it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env |= {
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
        }
        if self.base is not None:
            env |= {
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_PID_FILE": str(self.base / "rabbit.pid"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            }
        return env

    def _scrub(self, text: str) -> str:
        try:
            cookie = self.cookie_file.read_text().strip()
        except OSError:
            return text
        return text.replace(cookie, "<cookie>") if cookie else text

    def ctl(self, *args: str, timeout_s: float = 60.0, check: bool = True) -> str:
        """Run ``rabbitmqctl -n NODE ARGS``; its stdout (errors carry its scrubbed output)."""
        argv = [self._exe("rabbitmqctl"), "-n", self.name, *args]
        try:
            done = subprocess.run(
                argv,
                env=self.env(),
                cwd=self.workdir,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"rabbitmqctl {args[0]} on {self.name} timed out") from None
        if check and done.returncode != 0:
            detail = self._scrub((done.stderr or done.stdout).strip())[-3000:]
            raise Unavailable(f"rabbitmqctl {args[0]} on {self.name} failed: {detail}")
        return done.stdout

    # -- life cycle --------------------------------------------------------------------------

    def is_running(self) -> bool:
        """Whether this node answers (its AMQP port is open and ``rabbitmqctl ping`` succeeds)."""
        if not port_open(self.amqp_port):
            return False
        try:
            self.ctl("ping", timeout_s=30)
        except Unavailable:
            return False
        return True

    def start(self, timeout_s: float = 90.0) -> bool:
        """Find the node running, or start it; returns whether this call started it."""
        if self.is_running():
            self.started_by_us = self.started_by_us or self._marked()
            how = (
                "started by labelloop earlier" if self.started_by_us else "not started by labelloop"
            )
            log.info("RabbitMQ node %s already running (%s)", self.name, how)
            return False
        if port_open(self.amqp_port):
            raise ConfigError(
                f"port {self.amqp_port} is taken by something that is not node {self.name} (the "
                "machine's own RabbitMQ?): give the agent's node another --amqp-port, or use that "
                "node with --rabbit-node, --rabbit-home and --adopt-node"
            )
        self.ensure_cookie()  # our own cookie file (mode 600) before Erlang makes one
        if self.base is not None:
            for sub in ("mnesia", "log"):
                (self.base / sub).mkdir(parents=True, exist_ok=True)
            plugins = self.base / "enabled_plugins"
            if not plugins.exists():
                plugins.write_text("[].\n")
            if self.config is not None:
                write_bytes_atomic(self.base / "rabbitmq.conf", self.config.encode(), mode=0o600)
        log.info("starting RabbitMQ node %s (AMQP port %s)", self.name, self.amqp_port)
        subprocess.run(
            [self._exe("rabbitmq-server"), "-detached"],
            env=self.env(),
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        self.wait_ready(timeout_s)
        self.started_by_us = True
        if self.marker is not None:
            write_bytes_atomic(self.marker, self.name.encode(), mode=0o600)
        return True

    def _marked(self) -> bool:
        try:
            return self.marker is not None and self.marker.read_text().strip() == self.name
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until the node accepts AMQP connections (the listener opens once it has booted)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if port_open(self.amqp_port):
                self.ctl("await_startup", "--timeout", "60", timeout_s=90)
                return
            time.sleep(0.25)
        raise Unavailable(f"RabbitMQ node {self.name} did not start in {timeout_s:.0f} s")

    def pid(self) -> int | None:
        """The node's OS process, from its pid file (only for a node with its own ``base``)."""
        if self.base is None:
            return None
        try:
            return int((self.base / "rabbit.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the node (the whole Erlang VM) and wait for its AMQP port to close.

        A node stuck in its boot (waiting for cluster peers that are gone) does not answer
        ``stop``; a node with its own pid file is then ended by signal.
        """
        pid = self.pid()
        try:
            self.ctl("stop", timeout_s=timeout_s, check=False)
        except Unavailable:
            log.warning("node %s did not stop in %.0f s; ending it by signal", self.name, timeout_s)
        if pid is not None and _process_alive(pid):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + 15
                while _process_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if not _process_alive(pid):
                    break
        deadline = time.monotonic() + timeout_s
        while port_open(self.amqp_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.started_by_us = False
        if self.marker is not None:
            self.marker.unlink(missing_ok=True)

    # -- cluster -----------------------------------------------------------------------------

    def cluster_status(self) -> dict[str, object]:
        out = self.ctl("cluster_status", "--formatter", "json", timeout_s=30)
        data: dict[str, object] = json.loads(out[out.find("{") :])
        return data

    def running_nodes(self) -> list[str]:
        """The running members of this node's cluster (itself included)."""
        nodes = self.cluster_status().get("running_nodes", [])
        return sorted(str(n) for n in nodes) if isinstance(nodes, list) else []

    def join(
        self,
        master: str,
        cookie: str,
        timeout_s: float = 90.0,
        *,
        allow_reset: bool = False,
        members: list[str] | None = None,
    ) -> bool:
        """The seed's step iii: join ``master``'s cluster; returns False if already a member.

        With a different cookie, the node takes the cluster's cookie first (:meth:`adopt_cookie`).
        Then ``stop_app``, ``reset``, ``join_cluster``, ``start_app``. A node the agent did not
        start is reset only with ``allow_reset`` (else :class:`ConfigError`, nothing touched).
        ``members``: this node's running members as the caller just read them (not read again).
        """
        if master == self.name:
            return False
        # Each rabbitmqctl call costs seconds (an Erlang VM starts): as few as possible here.
        running = port_open(self.amqp_port)
        if running:
            try:
                if master in (members if members else self.running_nodes()):
                    return False
            except Unavailable:
                running = self.is_running()
        if running and not (self.started_by_us or self._marked() or allow_reset):
            raise ConfigError(
                f"RabbitMQ node {self.name} was not started by labelloop, and joining {master}'s "
                "cluster would reset it (its users, vhosts and queues would be lost). Give the "
                "agent a node of its own (--rabbit-node, --amqp-port, --rabbit-home), or allow "
                "the reset with --adopt-node"
            )
        if self.read_cookie() != cookie:
            self.adopt_cookie(cookie, timeout_s, running=running)
        if not running:
            self.start(timeout_s)
        log.info("node %s joins %s", self.name, master)
        if not self._join_in_one_call(master, timeout_s):
            self.ctl("stop_app")
            self.ctl("reset")
            try:
                self.ctl("join_cluster", master, timeout_s=timeout_s)
            finally:
                self.start_app(timeout_s)
        # Quorum queues declared before this node joined get a replica here too; in the
        # background, so that the workers need not wait for it.
        threading.Thread(target=self._grow_queues, name="grow-queues", daemon=True).start()
        return True

    def _join_in_one_call(self, master: str, timeout_s: float) -> bool:
        """``stop_app``, ``reset``, ``join_cluster``, ``start_app`` as one ``eval``: the same
        functions the four commands call, with one Erlang VM started instead of four (about
        10 s less per joining node here). False, with the node left for the four commands to
        redo, if any step did not go as expected."""
        if not NODE_NAME.fullmatch(master):
            raise InvalidInput(f"not a RabbitMQ node name: {master!r}")
        expr = (
            "ok = rabbit:stop(), ok = rabbit_mnesia:reset(), "
            f"J = rabbit_mnesia:join_cluster('{master}', disc), S = rabbit:start(), {{J, S}}."
        )
        try:
            out = self.ctl("eval", expr, timeout_s=timeout_s).strip()
        except Unavailable as exc:
            log.warning("node %s: one-call join failed (%s); step by step", self.name, exc)
            return False
        joined = re.fullmatch(r"\{(ok|\{ok,already_member\}),(.*)\}", out, re.DOTALL)
        if joined is None:
            log.warning("node %s: one-call join answered %s; step by step", self.name, out[:200])
            return False
        if joined.group(2).strip() != "ok":  # joined, but the app did not come back yet
            self.start_app(timeout_s)
        return True

    def _grow_queues(self) -> None:
        try:
            self._queues("grow", self.name, "all")
        except (Unavailable, OSError, subprocess.SubprocessError) as exc:
            log.warning("could not add %s to existing quorum queues: %s", self.name, exc)

    def adopt_cookie(self, cookie: str, timeout_s: float = 90.0, *, running: bool = True) -> None:
        """Make ``cookie`` this node's cookie, in its file and in the running node.

        The seed restarts the node for this. A running node can take the new cookie without a
        restart (about 10 s less per joining node): it reads it from a mode-600 file next to the
        cookie (``erlang:set_cookie``), so the cookie is never on a command line; the file then
        becomes the cookie file, and later ``rabbitmqctl`` calls use it. If that fails, the node
        is restarted with the new cookie, as in the seed.
        """
        if running:
            staged = self.home / f"{COOKIE_NAME}.next"
            write_secret(staged, cookie)
            path = str(staged).replace("\\", "\\\\").replace('"', '\\"')
            expr = (
                f'{{ok, C}} = file:read_file("{path}"), '
                "erlang:set_cookie(node(), binary_to_atom(string:trim(C), utf8)), ok."
            )
            try:
                self.ctl("eval", expr, timeout_s=60)
                with contextlib.suppress(FileNotFoundError):
                    before = self.cookie_file.stat()
                    keep_owner(staged, before.st_uid, before.st_gid)
                os.replace(staged, self.cookie_file)  # the next call (stop_app) checks it
                log.info("node %s took the cluster's cookie", self.name)
                return
            except Unavailable as exc:
                log.warning("node %s: live cookie change failed (%s); restarting", self.name, exc)
            finally:
                if staged.exists():
                    staged.unlink()
            was_ours = self.started_by_us
            self.stop()
            self.write_cookie(cookie)
            self.start(timeout_s)
            self.started_by_us = self.started_by_us or was_ours
        else:
            self.write_cookie(cookie)

    def start_app(self, timeout_s: float = 90.0, attempts: int = 5) -> None:
        """``start_app``, retried: right after ``stop_app`` the AMQP port is sometimes not free
        yet (``eaddrinuse``), which passes within seconds."""
        for attempt in range(attempts):
            try:
                self.ctl("start_app", timeout_s=timeout_s)
                return
            except Unavailable as exc:
                if attempt == attempts - 1 or "eaddrinuse" not in exc.message:
                    raise
                log.info("node %s: AMQP port busy, start_app again", self.name)
                time.sleep(2)

    def _queues(self, *args: str) -> str:
        argv = [self._exe("rabbitmq-queues"), "-n", self.name, *args]
        done = subprocess.run(
            argv,
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise Unavailable(self._scrub((done.stderr or done.stdout).strip())[-300:])
        return done.stdout

    def ensure_user(self, user: str, password: str) -> None:
        """Create (or update) an AMQP user with full rights on ``/`` (production, not guest).

        The password goes through standard input, never the command line.
        """
        users = self.ctl("list_users", "--formatter", "json")
        known = {u.get("user") for u in json.loads(users[users.find("[") :])}
        argv = [self._exe("rabbitmqctl"), "-n", self.name]
        if user in known:
            argv += ["change_password", user]
        else:
            argv += ["add_user", user]
        done = subprocess.run(
            argv, env=self.env(), cwd=self.workdir, input=password + "\n", capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise Unavailable(f"could not set up RabbitMQ user {user!r} on {self.name}")
        self.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")

    def leave(self, timeout_s: float = 90.0) -> None:
        """Leave the cluster for good: ``stop_app``, ``reset``, ``start_app`` (a node of its own
        again). The other members must then forget it (:meth:`forget`) if it was away."""
        self.ctl("stop_app", timeout_s=timeout_s)
        try:
            self.ctl("reset", timeout_s=timeout_s)
        finally:
            self.start_app(timeout_s)

    def forget(self, node: str, timeout_s: float = 90.0) -> bool:
        """Remove ``node`` (stopped or gone) from this node's cluster; False if not a member."""
        if not NODE_NAME.fullmatch(node):
            raise InvalidInput(f"not a RabbitMQ node name: {node!r}")
        status = self.cluster_status()
        disc = status.get("disk_nodes", [])
        if not isinstance(disc, list) or node not in disc or node == self.name:
            return False
        self.ctl("forget_cluster_node", node, timeout_s=timeout_s)
        return True

    def queues(self) -> list[dict[str, object]]:
        """Every queue of ``/``: name, type, messages, consumers, and a quorum queue's members."""
        out = self.ctl(
            "list_queues", "name", "type", "messages", "consumers", "leader", "members", "online",
            "--formatter", "json", timeout_s=30,
        )  # fmt: skip
        rows = json.loads(out[out.find("[") :] or "[]")
        return [dict(r) for r in rows if isinstance(r, dict)]
