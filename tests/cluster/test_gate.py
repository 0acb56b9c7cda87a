"""The start gate the agent's workers and service wait at (labelloop.cluster.gate)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from labelloop.cluster.gate import GATE_ENV, close_gate, open_gate, wait_for_gate
from labelloop.errors import Unavailable


def test_no_gate_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GATE_ENV, raising=False)
    wait_for_gate(timeout_s=0)  # returns at once


def test_a_process_waits_until_the_gate_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "agent" / "start-gate"
    monkeypatch.setenv(GATE_ENV, str(gate))
    waiting = threading.Event()
    passed = threading.Event()

    def process() -> None:
        waiting.set()
        wait_for_gate(timeout_s=60)
        passed.set()

    thread = threading.Thread(target=process, daemon=True)
    thread.start()
    assert waiting.wait(10)
    assert not passed.wait(0.3)  # closed: still waiting
    open_gate(gate)
    assert passed.wait(30)
    thread.join(10)
    close_gate(gate)
    assert not gate.exists()


def test_a_gate_that_never_opens_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GATE_ENV, str(tmp_path / "start-gate"))
    with pytest.raises(Unavailable, match="start gate"):
        wait_for_gate(timeout_s=0.2, poll_s=0.01)
