"""``serve --processes N``: N API processes on one socket, forked once the code is imported.

uvicorn's own ``workers=N`` starts each process with ``spawn``: every one imports the whole API
again (seconds of CPU each), and a cluster starts a predict service of N processes on every
inference machine at once. Here the parent imports the modules and binds the socket, then forks;
each child only builds its app (its own store engine and broker connections: nothing of those
exists before the fork) and serves. The parent restarts a child that dies, stops them all on
SIGTERM or SIGINT, and exits when a child cannot start at all (so the agent's supervisor sees it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from types import FrameType

log = logging.getLogger(__name__)

#: A child that exits sooner than this after its start is counted as a failed start.
FAILED_START_S = 5.0
#: Failed starts in a row after which the parent gives up (exit code 3, uvicorn's own).
MAX_FAILED_STARTS = 3
STARTUP_FAILURE = 3


def serve_forked(
    factory: str, host: str, port: int, processes: int, *, log_level: str = "warning"
) -> int:
    """Serve ``factory`` (``"module:function"`` returning the app) from ``processes`` forked
    children on ``host:port``; returns the exit code once they have stopped. What the children
    share is what the caller imported before: nothing that holds a connection or a thread."""
    import uvicorn

    config = uvicorn.Config(factory, factory=True, host=host, port=port, log_level=log_level)
    sock = config.bind_socket()
    children: dict[int, float] = {}  # pid -> start time
    stopping = False
    failed = 0

    def start_child() -> None:
        pid = os.fork()
        if pid == 0:  # the child: serve until told to stop, never return into the parent's code
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                server = uvicorn.Server(config)
                server.run(sockets=[sock])
                code = 0 if server.started else STARTUP_FAILURE
            except SystemExit as exc:  # uvicorn's own way out (the app did not load): logged
                code = exc.code if isinstance(exc.code, int) else STARTUP_FAILURE
            except BaseException:  # a child must end here, whatever happened
                log.exception("API process failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = time.monotonic()

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(processes):
            start_child()
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started = children.pop(pid, None)
            if started is None or stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            quick = time.monotonic() - started < FAILED_START_S
            failed = failed + 1 if quick or code == STARTUP_FAILURE else 0
            if failed >= MAX_FAILED_STARTS:
                log.error("API processes keep failing at start (exit %s); stopping", code)
                stop(signal.SIGTERM, None)
                stopping = True
                continue
            log.warning("API process %s exited with %s; starting another", pid, code)
            time.sleep(min(1.0 * failed, 5.0))
            if not stopping:
                start_child()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    return STARTUP_FAILURE if failed >= MAX_FAILED_STARTS else 0
