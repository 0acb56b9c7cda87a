"""Data-parallel fine-tuning over a world of processes: ``torch.distributed`` with gloo (CPU) or
NCCL (GPU), ``DistributedDataParallel`` and a ``DistributedSampler`` shard per rank.

The training job's process is the *leader*. It writes the fit's input (cached feature maps, labels,
learner parameters) once into the fit's Snapshot folder on the shared volume, hosts the world's c10d
store (a ``TCPStore`` on a port of its own from ``LABELLOOP_TRAIN_RDZV_PORTS``) and starts the
ranks through a :class:`Launcher`: rank 0 is always a process of its own machine, the others are
processes on this machine (:class:`LocalLauncher`) or on the other train machines, asked to join
by a Celery control command (:mod:`labelloop.jobs.celery_worker`, ``labelloop_train_join``).

Every rank trains the same :class:`~labelloop.distributed.trainer.Trainer` loop; rank 0 writes
``epoch-<k>.ckpt`` atomically after every epoch (and ``epoch-<k>-step-<s>.ckpt`` every
``LABELLOOP_TRAIN_CHECKPOINT_STEPS`` steps) and ``final.pt`` at the end. When a rank is lost
(its process killed, its machine stopped), the collectives of the others fail, the leader sees rank
0 end without ``final.pt``, and re-forms the world with the ranks that can still join (a new
attempt: a new store prefix, a new world size), which resumes from the newest checkpoint. When the
leader itself dies, its ranks die with it (``PR_SET_PDEATHSIG`` locally, a store watchdog
remotely) and the redelivered job resumes from the same checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from labelloop.distributed.checkpoints import (
    write_whole,
)
from labelloop.distributed.trainer import Trainer, TrainParams, build_tail
from labelloop.errors import ConfigError, LabelloopError

log = logging.getLogger(__name__)

INPUT_FILE = "input.pt"
FINAL_FILE = "final.pt"


def parse_ports(value: str) -> range:
    """``"29400-29499"`` (or one port) as a range."""
    try:
        lo, _, hi = value.partition("-")
        ports = range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise ConfigError(
            f"LABELLOOP_TRAIN_RDZV_PORTS must look like 29400-29499, not {value!r}"
        ) from None
    if not ports or ports.start < 1024 or ports.stop > 65536:
        raise ConfigError(f"LABELLOOP_TRAIN_RDZV_PORTS {value!r} is not a range of user ports")
    return ports


@dataclass(frozen=True)
class World:
    """One attempt of a distributed fit: what every rank needs to join it (sent as JSON)."""

    #: The rendezvous id: ``task-<t>/job-<j>/<fit>``; with ``attempt``, the store's key prefix.
    run: str
    attempt: int
    host: str
    port: int
    size: int
    #: The fit's folder on the shared volume (input, checkpoints, final model).
    folder: str
    keep: int = 2
    timeout_s: float = 120.0
    #: A checkpoint every this many steps besides each epoch's (0: each epoch's only).
    every_steps: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> World:
        return cls(**json.loads(text))


@dataclass
class Member:
    """Where one rank runs: this machine (``node`` None) or a train worker's Celery node."""

    node: str | None = None
    host: str = "127.0.0.1"


class RankHandle(Protocol):
    """A started rank; ``poll`` is its exit status (None while it runs, or when it is remote)."""

    @property
    def pid(self) -> int: ...
    @property
    def member(self) -> Member: ...

    def poll(self) -> int | None: ...
    def stop(self) -> None: ...


class Launcher(Protocol):
    """Who hosts the ranks of an attempt, and how they are started."""

    host: str

    def members(self, lost: list[Member]) -> list[Member]: ...
    def start(self, member: Member, world: World, rank: int) -> RankHandle: ...


# -- processes --------------------------------------------------------------------------------


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


#: Loaded before any fork: the child only calls into it (no loading, no locks after fork).
_LIBC = _libc()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends (Linux)."""
    if _LIBC is not None:
        with contextlib.suppress(AttributeError):
            _LIBC.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def spawn_rank(world: World, rank: int, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m labelloop.distributed.world`` for one rank; it dies with its parent."""
    out: Any = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "labelloop.distributed.world", world.to_json(), str(rank)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # only prctl: no locks
        )
    finally:
        if log_path is not None:
            out.close()


@dataclass
class LocalRank:
    proc: subprocess.Popen[bytes]
    member: Member

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


@dataclass
class LocalLauncher:
    """Every rank a process of this machine (embedded mode with ``LABELLOOP_TRAIN_LOCAL_RANKS``,
    and the tests): a rank whose process was killed is not started again."""

    ranks: int
    host: str = "127.0.0.1"
    slots: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.slots = [Member(None, self.host) for _ in range(self.ranks)]

    def members(self, lost: list[Member]) -> list[Member]:
        self.slots = [m for m in self.slots if all(m is not x for x in lost)] or [
            Member(None, self.host)
        ]
        return list(self.slots)

    def start(self, member: Member, world: World, rank: int) -> RankHandle:
        log_path = Path(world.folder) / "logs" / f"attempt-{world.attempt}-rank-{rank}.log"
        return LocalRank(spawn_rank(world, rank, log_path), member)


# -- the leader -------------------------------------------------------------------------------


def write_input(
    folder: Path,
    params: TrainParams,
    maps: np.ndarray,
    y: np.ndarray,
    shape: tuple[int, ...],
    cut: int,
    init: Any,
) -> None:
    """The fit's data, parameters and starting weights, for every rank (once per fit, whole)."""
    import torch

    payload = {
        "maps": maps,
        "y": y,
        "shape": tuple(shape),
        "cut": cut,
        "n_classes": int(y.max()) + 1,
        "params": asdict(params),
        "init": init.state_dict(),
    }
    write_whole(folder / INPUT_FILE, lambda fh: torch.save(payload, fh))


def _open_store(host: str, ports: range, start: int, timeout_s: float) -> tuple[Any, int]:
    """The world's c10d store on the first free port of the range, from ``start`` on."""
    import torch.distributed as dist

    n = len(ports)
    for i in range(n):
        port = ports[(start + i) % n]
        try:
            store = dist.TCPStore(  # type: ignore[attr-defined]
                host,
                port,
                is_master=True,
                wait_for_workers=False,
                timeout=timedelta(seconds=timeout_s),
                use_libuv=False,
            )
            return store, port
        except (RuntimeError, OSError):
            continue
    raise LabelloopError(f"no free rendezvous port in {ports.start}-{ports.stop - 1} on {host}")


@dataclass
class WorldConfig:
    """How a training job runs its distributed fits (:meth:`FineTune.set_world`)."""

    launcher: Launcher
    #: ``task-<t>/job-<j>``: with the fit's folder name, the rendezvous id of each fit.
    run: str
    ports: range
    keep: int = 2
    restarts: int = 3
    timeout_s: float = 120.0
    every_steps: int = 0
    #: Called with each attempt's world and its ranks (the job records them for people to see).
    on_world: Callable[[World, list[RankHandle]], None] | None = None
    #: Called when a fit is done: its rendezvous id, each attempt's world size, the epoch the
    #: last attempt resumed from (None: from the start).
    on_done: Callable[[str, list[int], int | None], None] | None = None


@dataclass
class Outcome:
    """How a distributed fit went: the world size of each attempt."""

    worlds: list[int] = field(default_factory=list)


def run_world(folder: Path, run: str, config: WorldConfig) -> Outcome:
    """Run the fit whose input is in ``folder`` until rank 0 writes ``final.pt``; re-form the world
    after a lost rank, at most ``config.restarts`` times."""
    outcome = Outcome()
    final = folder / FINAL_FILE
    with contextlib.suppress(OSError):
        final.unlink()  # an earlier attempt's final model is written again from its checkpoint
    launcher = config.launcher
    start = int.from_bytes(run.encode()[-4:], "big") % len(config.ports)
    store, port = _open_store(launcher.host, config.ports, start, config.timeout_s)
    lost: list[Member] = []
    handles: list[RankHandle] = []
    try:
        for attempt in range(config.restarts + 1):
            members = launcher.members(lost)
            world = World(
                run,
                attempt,
                launcher.host,
                port,
                len(members),
                str(folder),
                config.keep,
                config.timeout_s,
                config.every_steps,
            )
            handles = []
            try:
                for rank, member in enumerate(members):
                    handles.append(launcher.start(member, world, rank))
            except LabelloopError as exc:
                log.warning("%s: a rank could not join (%s); re-forming", run, exc.message)
                for h in handles:
                    h.stop()
                lost = []
                continue
            outcome.worlds.append(world.size)
            if config.on_world is not None:
                config.on_world(world, handles)
            log.info("%s: attempt %s with a world of %s", run, attempt, world.size)
            rc = _wait_rank0(handles)
            if rc == 0 and final.is_file():
                for h in handles[1:]:
                    h.stop()
                break
            # A failed collective ends the others within moments; a rank that was killed (not
            # one that failed because another was) is not asked back.
            for h in handles[1:]:
                if isinstance(h, LocalRank):
                    _wait_exit(h, 10.0)
            lost = [h.member for h in handles if h.poll() == -signal.SIGKILL]
            for h in handles[1:]:
                h.stop()
            log.warning("%s: attempt %s ended (rank 0 exit %s); re-forming", run, attempt, rc)
        else:
            raise LabelloopError(
                f"distributed training gave up after {config.restarts + 1} attempts "
                "(its ranks kept failing)"
            )
    finally:
        for h in handles:  # the job itself failed (a time limit): no rank outlives it
            h.stop()
        del store
    return outcome


def _wait_exit(handle: RankHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while handle.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def _wait_rank0(handles: list[RankHandle]) -> int:
    """Rank 0's exit status; a remote rank's loss shows there as a failed collective."""
    while True:
        rc = handles[0].poll()
        if rc is not None:
            return rc
        time.sleep(0.2)


# -- a rank -----------------------------------------------------------------------------------


def _watchdog(store: Any, interval: float = 2.0) -> None:
    """End this rank when the leader's store is gone (the leader died)."""

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                store.add("alive", 0)
            except Exception:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="rdzv-watchdog").start()


def rank_main(world: World, rank: int) -> int:
    """One rank: join the process group, train, and (rank 0) write the checkpoints and the model."""
    import torch
    import torch.distributed as dist

    store = dist.TCPStore(  # type: ignore[attr-defined]
        world.host,
        world.port,
        is_master=False,
        timeout=timedelta(seconds=world.timeout_s),
        use_libuv=False,
    )
    _watchdog(store)
    log.info("rank %s/%s of %s: store reached", rank, world.size, world.run)
    prefix = f"{world.run}/{world.attempt}"
    prefixed = dist.PrefixStore(prefix, store)  # type: ignore[attr-defined]
    cuda = torch.cuda.is_available()
    device = f"cuda:{rank % torch.cuda.device_count()}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        store=prefixed,
        rank=rank,
        world_size=world.size,
        timeout=timedelta(seconds=world.timeout_s),
    )
    log.info("rank %s/%s: process group formed", rank, world.size)
    folder = Path(world.folder)
    data = torch.load(folder / INPUT_FILE, weights_only=False)
    model = build_tail(data["cut"], data["n_classes"])
    model.load_state_dict(data["init"])
    params = TrainParams(**data["params"])
    torch.manual_seed(params.seed)
    trainer = Trainer(
        params,
        data["maps"],
        data["y"],
        data["shape"],
        model,
        rank=rank,
        world=world.size,
        device=device,
    )
    trainer.fit_folder(folder, keep=world.keep, every_steps=world.every_steps)
    if rank == 0:
        trainer.save_final(folder / FINAL_FILE)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    world, rank = World.from_json(argv[0]), int(argv[1])
    threads = os.environ.get("LABELLOOP_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return rank_main(world, rank)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
