"""Masters are the smallest addresses of each role among the good machines, as addresses."""

from __future__ import annotations

from labelloop.cluster.election import elect, masters
from labelloop.cluster.protocol import MachineInfo, Role


def machine(ip: str, role: Role | None) -> MachineInfo:
    return MachineInfo(
        hostname=f"h{ip}", ip=ip, port=1, erlang_hash="x", type=role,
        rabbit_node=f"rabbit@h{ip.replace(':', '-')}", amqp_port=5672, dist_port=25672,
    )  # fmt: skip


def test_ten_dot_nine_beats_ten_dot_ten() -> None:
    good = [machine("10.0.0.10", "inference"), machine("10.0.0.9", "inference")]
    assert "10.0.0.10" < "10.0.0.9"  # what a string comparison would pick
    chosen = elect(good, "inference")
    assert chosen is not None and chosen.ip == "10.0.0.9"


def test_masters_per_role_and_missing_role() -> None:
    good = [
        machine("10.0.0.100", "train"),
        machine("10.0.0.20", "train"),
        machine("10.0.1.1", "inference"),
        machine("10.0.0.200", "inference"),
        machine("10.0.0.1", None),
    ]
    train, inference = masters(good)
    assert train is not None and train.ip == "10.0.0.20"
    assert inference is not None and inference.ip == "10.0.0.200"
    assert masters([machine("10.0.0.5", "train")])[1] is None
    assert elect([], "train") is None


def test_ipv4_before_ipv6() -> None:
    good = [machine("::1", "train"), machine("192.168.0.1", "train")]
    chosen = elect(good, "train")
    assert chosen is not None and chosen.ip == "192.168.0.1"
