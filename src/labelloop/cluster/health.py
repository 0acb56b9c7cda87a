"""What "healthy" means for a machine and for the cluster: the one home of that rule.

A machine is **good** only when its agent answers, ``initial`` succeeded there for the role the
coordinator gave it, its RabbitMQ node runs as a member of the cluster master's cluster, and every
process it supervises is running (not restarting, not crash-looping). One that answers but falls
short is **failing** (with the reasons), one whose agent does not answer is **bad**, and one that
``cluster down`` stopped is **down**.

The cluster's verdict: **healthy** when every machine with a role is good; **degraded** when some
are not but each role still has a good machine (it serves, with less capacity or redundancy);
**down** when a role has no good machine (training or predictions stop), after ``cluster down``,
or before ``cluster init``. ``labelloop cluster status`` exits with :data:`EXIT_CODES` and the
coordinator's ``GET /health`` answers the same verdict.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from labelloop.cluster.protocol import ROLES, AgentStatus, Role

MachineState = Literal["good", "failing", "bad", "down", "unassigned"]


class Verdict(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"


#: ``labelloop cluster status``' exit codes (2 stays "the command failed", as for every command).
EXIT_CODES: dict[Verdict, int] = {Verdict.HEALTHY: 0, Verdict.DEGRADED: 3, Verdict.DOWN: 4}
#: The coordinator's ``GET /health`` status codes: 503 only when nothing serves.
HTTP_CODES: dict[Verdict, int] = {Verdict.HEALTHY: 200, Verdict.DEGRADED: 200, Verdict.DOWN: 503}


def machine_state(
    assigned: Role | None, status: AgentStatus | None, cluster_node: str | None
) -> tuple[MachineState, list[str]]:
    """A machine's state and, when it is not good, why.

    ``cluster_node`` is the node of the cluster master (the node every other node joins).
    """
    if status is None:
        return "bad", ["its agent does not answer"]
    if assigned is None:
        return "unassigned", []
    if status.stopped:
        return "down", ["stopped (`labelloop cluster down`); `cluster init` starts it again"]
    problems: list[str] = []
    if status.initial_error:
        problems.append(f"initial failed: {status.initial_error}")
    elif status.role != assigned:
        problems.append(f"initial has not run here as {assigned}")
    if not status.rabbit_running:
        problems.append(f"its RabbitMQ node {status.machine.rabbit_node} does not answer")
    elif cluster_node and cluster_node not in status.rabbit_cluster:
        problems.append(
            f"its RabbitMQ node {status.machine.rabbit_node} is not a running member of "
            f"{cluster_node}'s cluster"
        )
    for child in status.workers:
        if not child.alive:
            code = f", last exit code {child.last_exit_code}" if child.last_exit_code else ""
            problems.append(
                f"{child.name} is {child.state} ({child.recent_restarts} restarts in 5 min{code})"
            )
    return ("failing" if problems else "good"), problems


@dataclass(frozen=True)
class ClusterHealth:
    verdict: Verdict
    reason: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def http_code(self) -> int:
        return HTTP_CODES[self.verdict]


def cluster_health(
    machines: Iterable[tuple[Role | None, MachineState]], *, initialised: bool, stopped: bool
) -> ClusterHealth:
    """The verdict from every machine's (role, state)."""
    if stopped:
        return ClusterHealth(Verdict.DOWN, "stopped by `labelloop cluster down`")
    if not initialised:
        return ClusterHealth(Verdict.DOWN, "not initialised (`labelloop cluster init`)")
    assigned = [(role, state) for role, state in machines if role is not None]
    if not assigned:
        return ClusterHealth(Verdict.DOWN, "no machine has a role")
    for role in ROLES:
        states = [state for r, state in assigned if r == role]
        if states and "good" not in states:
            return ClusterHealth(Verdict.DOWN, f"no {role} machine is good")
    not_good = sum(1 for _, state in assigned if state != "good")
    if not_good:
        return ClusterHealth(Verdict.DEGRADED, f"{not_good} of {len(assigned)} machines not good")
    return ClusterHealth(Verdict.HEALTHY, f"all {len(assigned)} machines good")
