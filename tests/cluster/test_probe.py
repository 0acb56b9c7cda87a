"""Good and bad machines: an agent port that answers is good; one that does not is bad."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from labelloop.cluster import probe
from labelloop.cluster.probe import probe_machines, tcp_probe
from labelloop.cluster.protocol import MachineInfo


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine(ip: str, port: int) -> MachineInfo:
    return MachineInfo(
        hostname="h", ip=ip, port=port, erlang_hash="x", type="inference",
        rabbit_node="n@localhost", amqp_port=1, dist_port=2,
    )  # fmt: skip


def test_tcp_probe(listener: int) -> None:
    assert tcp_probe("127.0.0.1", listener)
    assert not tcp_probe("127.0.0.1", closed_port())


def test_split_keeps_order_and_names_the_method(listener: int) -> None:
    up1, down, up2 = (
        machine("127.0.0.1", listener),
        machine("127.0.0.1", closed_port()),
        machine("127.0.0.1", listener),
    )
    result = probe_machines([up1, down, up2], timeout_s=0.5, use_icmp=False)
    assert result.good == [up1, up2]
    assert result.bad == [down]
    assert result.method == "tcp"


def test_icmp_failure_makes_a_machine_bad(listener: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "icmp_ping", lambda ip, timeout_s=1: False)
    result = probe_machines([machine("127.0.0.1", listener)], timeout_s=0.5, use_icmp=True)
    assert result.method == "icmp"
    assert result.good == [] and len(result.bad) == 1


def test_icmp_is_used_only_where_ping_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    probe.icmp_available.cache_clear()
    monkeypatch.setattr(probe.shutil, "which", lambda _: None)
    try:
        assert not probe.icmp_available()
        assert not probe.icmp_ping("127.0.0.1")
        assert probe_machines([], use_icmp=None).method == "tcp"
    finally:
        probe.icmp_available.cache_clear()
