"""Who is reachable (seed step 2.1 i): ICMP ping where this host allows it, and always a TCP
connect to the machine's agent port (a machine whose agent does not answer cannot take part).

The seed pings only; a container often has no ``ping`` binary or no right to send ICMP, so the
probe says which method it used (``icmp`` or ``tcp``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

from labelloop.cluster.protocol import MachineInfo


@lru_cache(maxsize=1)
def icmp_available() -> bool:
    """Whether ``ping`` exists here and can ping the loopback (binary present, ICMP permitted)."""
    return shutil.which("ping") is not None and icmp_ping("127.0.0.1")


def icmp_ping(ip: str, timeout_s: int = 1) -> bool:
    """One ICMP echo to ``ip`` (argument list, never a shell string)."""
    exe = shutil.which("ping")
    if exe is None:
        return False
    try:
        done = subprocess.run(
            [exe, "-c1", f"-W{timeout_s}", "--", ip],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s + 2,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def tcp_probe(ip: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether something accepts a TCP connection on ``ip:port``."""
    try:
        with socket.create_connection((ip, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class ProbeResult:
    good: list[MachineInfo]
    bad: list[MachineInfo]
    method: str  # "icmp" (ping and TCP) or "tcp" (TCP only)


def probe_machines(
    machines: Sequence[MachineInfo], *, timeout_s: float = 1.0, use_icmp: bool | None = None
) -> ProbeResult:
    """Split ``machines`` into good and bad, probing them in parallel; order is kept."""
    icmp = icmp_available() if use_icmp is None else use_icmp

    def reachable(m: MachineInfo) -> bool:
        if icmp and not icmp_ping(m.ip, max(1, round(timeout_s))):
            return False
        return tcp_probe(m.ip, m.port, timeout_s)

    if not machines:
        return ProbeResult([], [], "icmp" if icmp else "tcp")
    with ThreadPoolExecutor(max_workers=min(32, len(machines))) as pool:
        ok = list(pool.map(reachable, machines))
    good = [m for m, up in zip(machines, ok, strict=True) if up]
    bad = [m for m, up in zip(machines, ok, strict=True) if not up]
    return ProbeResult(good, bad, "icmp" if icmp else "tcp")
