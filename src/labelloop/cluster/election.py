"""Masters: the good machine with the smallest IP of each role (seed step 2.1 ii).

IPs are compared as addresses, not strings: ``10.0.0.9`` comes before ``10.0.0.10``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from labelloop.cluster.protocol import MachineInfo, Role


def address_key(machine: MachineInfo) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Sort key: IPv4 before IPv6, then by address value."""
    addr = ipaddress.ip_address(machine.ip)
    return (addr.version, addr)


def elect(good: Iterable[MachineInfo], role: Role) -> MachineInfo | None:
    """The master of ``role`` among the good machines, or None if the role has none."""
    candidates = [m for m in good if m.type == role]
    if not candidates:
        return None
    return min(candidates, key=address_key)


def masters(good: Iterable[MachineInfo]) -> tuple[MachineInfo | None, MachineInfo | None]:
    """``(master_train, master_inference)`` among the good machines."""
    machines = list(good)
    return elect(machines, "train"), elect(machines, "inference")
