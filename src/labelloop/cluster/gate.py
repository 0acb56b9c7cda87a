"""The start gate: an agent's workers and service import their code while its node joins.

``initial`` starts the role's processes before the RabbitMQ steps (joining the cluster, the
broker user), which take seconds per ``rabbitmqctl`` call: each process imports its code (seconds
of CPU too), then waits at the gate, a file the agent creates once its node is ready, before it
touches the broker or the store. Without ``LABELLOOP_START_GATE`` (any process not started by an
agent) there is no gate.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from labelloop.errors import Unavailable

GATE_ENV = "LABELLOOP_START_GATE"
#: How long a process waits at a gate that does not open (its agent stops it sooner if the
#: node cannot join).
GATE_TIMEOUT_S = 900.0


def wait_for_gate(timeout_s: float = GATE_TIMEOUT_S, poll_s: float = 0.05) -> None:
    """Return once the gate named by ``LABELLOOP_START_GATE`` is open (at once without one)."""
    path = os.environ.get(GATE_ENV)
    if not path:
        return
    gate = Path(path)
    deadline = time.monotonic() + timeout_s
    while not gate.exists():
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"the agent did not open the start gate ({gate}) in {timeout_s:.0f} s: its "
                "RabbitMQ node did not become ready (see the agent's log)"
            )
        time.sleep(poll_s)


def open_gate(gate: Path) -> None:
    gate.parent.mkdir(parents=True, exist_ok=True)
    gate.touch()


def close_gate(gate: Path) -> None:
    gate.unlink(missing_ok=True)
