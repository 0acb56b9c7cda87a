"""Supervised processes: restarted with back-off when they die, never duplicated, all stopped."""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

from labelloop.cluster.supervisor import START_MARK, ProcessSpec, Supervisor, backoff
from tests.support import wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def spec(tmp_path: Path, name: str = "w1", argv: list[str] | None = None) -> ProcessSpec:
    return ProcessSpec.make(
        name, "inference", argv or SLEEPER, dict(os.environ), tmp_path / f"{name}.log"
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_backoff_doubles_up_to_thirty_seconds() -> None:
    assert [backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_ensure_twice_starts_one_process(tmp_path: Path) -> None:
    sup = Supervisor(poll_s=0.05)
    try:
        assert sup.ensure(spec(tmp_path))
        pid = sup.pid("w1")
        assert not sup.ensure(spec(tmp_path))
        assert sup.pid("w1") == pid
        [status] = sup.status()
        assert status.alive and status.restarts == 0 and status.name == "w1"
    finally:
        sup.stop_all()
    assert pid is not None and not alive(pid)


def test_changed_spec_replaces_the_process(tmp_path: Path) -> None:
    sup = Supervisor(poll_s=0.05)
    try:
        sup.ensure(spec(tmp_path))
        old = sup.pid("w1")
        changed = [*SLEEPER, "x"]
        assert sup.ensure(spec(tmp_path, argv=changed))
        assert old is not None and not alive(old)
        assert sup.pid("w1") not in (None, old)
    finally:
        sup.stop_all()


def test_a_dead_process_is_restarted_with_backoff(tmp_path: Path) -> None:
    sup = Supervisor(poll_s=0.05, max_backoff_s=30)
    try:
        sup.ensure(spec(tmp_path))
        first = sup.pid("w1")
        assert first is not None
        os.kill(first, 9)
        killed_at = time.monotonic()
        wait_until(lambda: sup.pid("w1") not in (None, first), timeout=5)
        assert time.monotonic() - killed_at >= 0.9  # the first back-off is 1 s
        [status] = sup.status()
        assert status.restarts == 1 and status.alive
    finally:
        sup.stop_all()


def test_crashing_process_backs_off_exponentially(tmp_path: Path) -> None:
    sup = Supervisor(poll_s=0.05)
    crash = [
        sys.executable,
        "-c",
        "import sys, time; print(time.monotonic(), flush=True); sys.exit(3)",
    ]
    try:
        sup.ensure(spec(tmp_path, "crasher", crash))
        log = tmp_path / "crasher.log"

        def printed() -> list[str]:  # the process's own lines, not the supervisor's start marks
            text = log.read_text() if log.exists() else ""
            return [x for x in text.splitlines() if not x.startswith(START_MARK)]

        wait_until(lambda: len(printed()) >= 3, timeout=10)
        starts = [float(x) for x in printed()]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps[0] >= 0.9 and gaps[1] >= 1.9  # 1 s, then 2 s
    finally:
        sup.stop_all()


def test_stop_all_ends_children_too(tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    parent = [
        sys.executable, "-c",
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(child_pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)",
    ]  # fmt: skip
    sup = Supervisor(poll_s=0.05)
    sup.ensure(spec(tmp_path, "parent", parent))
    wait_until(lambda: child_pid_file.exists() and child_pid_file.read_text() != "")
    child = int(child_pid_file.read_text())
    parent_pid = sup.pid("parent")
    sup.stop_all()
    assert parent_pid is not None and not alive(parent_pid)
    wait_until(lambda: not alive(child), timeout=5)
    assert sup.status() == []


def test_status_tells_a_crash_loop_with_its_log(tmp_path: Path) -> None:
    sup = Supervisor(poll_s=0.05, scrub=lambda line: line.replace("hunter2", "***"))
    crash = [sys.executable, "-c", "import sys; print('boom: bad setting hunter2'); sys.exit(3)"]
    try:
        sup.ensure(spec(tmp_path, "crasher", crash))
        wait_until(lambda: sup.status()[0].state == "crash-looping", timeout=15)
        [status] = sup.status()
        assert not status.alive and status.last_exit_code == 3
        assert status.recent_restarts >= 2 and status.log_file == str(tmp_path / "crasher.log")
        assert status.log_tail == ["boom: bad setting ***"]  # the latest run only, scrubbed
    finally:
        sup.stop_all()


def test_a_killed_process_shows_its_exit_then_runs_again(tmp_path: Path) -> None:
    sup = Supervisor(poll_s=0.05)
    try:
        sup.ensure(spec(tmp_path))
        [status] = sup.status()
        assert status.state == "running" and status.uptime_s is not None
        assert status.last_exit_code is None and status.log_tail == []
        first = sup.pid("w1")
        assert first is not None
        os.kill(first, 9)
        wait_until(lambda: sup.status()[0].state == "restarting", timeout=5)
        assert not sup.status()[0].alive and sup.status()[0].pid is None
        wait_until(lambda: sup.status()[0].state == "running", timeout=5)
        [status] = sup.status()
        assert status.alive and status.last_exit_code == -9 and status.recent_restarts == 1
    finally:
        sup.stop_all()
