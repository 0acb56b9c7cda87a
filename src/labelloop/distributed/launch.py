"""How a training job forms its world: which launcher, and where people see the world.

Embedded mode runs ``LABELLOOP_TRAIN_LOCAL_RANKS`` rank processes on its machine (1: the fit runs in
the job's own process, no world at all). Cluster mode asks every live train worker to host a rank:
rank 0 is a process of the job's own worker, the others are started by a Celery control command
(``labelloop_train_join``, addressed to one worker by its node name) in the other train workers'
main processes, so a worker busy with another training still joins. Each attempt's world (size,
ranks, workers, pids, rendezvous port) is written into the job's payload: the jobs table and
``labelloop workers`` show it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm.attributes import flag_modified

from labelloop.distributed.world import (
    LocalLauncher,
    LocalRank,
    Member,
    RankHandle,
    World,
    WorldConfig,
    parse_ports,
    spawn_rank,
)
from labelloop.errors import LabelloopError
from labelloop.runtime import WORKER_NAME_ENV, Runtime
from labelloop.store.models import Job

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

JOIN_COMMAND = "labelloop_train_join"
#: Seconds a train worker has to answer a status broadcast or a join (a loaded machine is slow).
ANSWER_S = 5.0


@dataclass
class RemoteRank:
    """A rank another train worker started; it ends by itself when its world breaks up."""

    pid: int
    member: Member

    def poll(self) -> int | None:
        return None

    def stop(self) -> None:
        """Nothing to do: a rank whose rank 0 or store is gone fails within moments."""


@dataclass
class CeleryLauncher:
    """Rank 0 here; one rank on every other live train worker, asked by a control command."""

    app: Celery
    host: str
    me: str = field(default_factory=lambda: os.environ.get(WORKER_NAME_ENV, ""))

    def members(self, lost: list[Member]) -> list[Member]:
        from labelloop.jobs.celery_app import STATUS_COMMAND

        replies = self.app.control.broadcast(STATUS_COMMAND, reply=True, timeout=ANSWER_S) or []
        others = sorted(
            name
            for reply in replies
            for name, info in reply.items()
            if isinstance(info, dict) and "train" in info.get("queues", []) and name != self.me
        )
        return [Member(None, self.host)] + [Member(name, name) for name in others]

    def start(self, member: Member, world: World, rank: int) -> RankHandle:
        if member.node is None:
            return LocalRank(spawn_rank(world, rank, _log_path(world, rank)), member)
        replies = self.app.control.broadcast(
            JOIN_COMMAND,
            arguments={"world": world.to_json(), "rank": rank},
            destination=[member.node],
            reply=True,
            timeout=ANSWER_S,
        )
        for reply in replies or []:
            answer = reply.get(member.node)
            if isinstance(answer, dict) and "pid" in answer:
                return RemoteRank(int(answer["pid"]), member)
            if isinstance(answer, dict) and "error" in answer:
                raise LabelloopError(f"{member.node} refused to join: {answer['error']}")
        raise LabelloopError(f"train worker {member.node} did not answer the join")


def _log_path(world: World, rank: int) -> Any:
    from pathlib import Path

    return Path(world.folder) / "logs" / f"attempt-{world.attempt}-rank-{rank}.log"


def world_config(rt: Runtime, job_id: int, task_id: int) -> WorldConfig | None:
    """The world a training job's fits run over, or None: in the job's own process."""
    settings = rt.settings
    launcher: CeleryLauncher | LocalLauncher
    if settings.jobs == "celery" and settings.train_distributed:
        app = getattr(rt.jobs, "app", None)
        if app is None:
            return None
        launcher = CeleryLauncher(app, settings.train_rdzv_host)
    elif settings.train_local_ranks > 1:
        launcher = LocalLauncher(settings.train_local_ranks, settings.train_rdzv_host)
    else:
        return None

    def on_world(world: World, handles: list[RankHandle]) -> None:
        record_world(rt, job_id, world, handles)

    return WorldConfig(
        launcher,
        f"task-{task_id}/job-{job_id}",
        parse_ports(settings.train_rdzv_ports),
        keep=settings.train_keep_checkpoints,
        every_steps=settings.train_checkpoint_steps,
        restarts=settings.train_world_restarts,
        timeout_s=settings.train_rank_timeout_s,
        on_world=on_world,
        on_done=lambda fit, sizes, resumed: record_fit(rt, job_id, fit, sizes, resumed),
    )


def record_world(rt: Runtime, job_id: int, world: World, handles: list[RankHandle]) -> None:
    """The job's current world, in its payload (``world``): size, attempt and who runs each rank."""
    ranks = [
        {"rank": r, "worker": h.member.node or os.environ.get(WORKER_NAME_ENV), "pid": h.pid}
        for r, h in enumerate(handles)
    ]
    info = {
        "size": world.size,
        "attempt": world.attempt,
        "fit": world.run,
        "rendezvous": f"{world.host}:{world.port}",
        "ranks": ranks,
    }
    with rt.session() as s:
        job = s.get(Job, job_id)
        if job is not None:
            job.payload = {**(job.payload or {}), "world": info}
            flag_modified(job, "payload")
    log.info("job %s: world of %s (attempt %s) %s", job_id, world.size, world.attempt, ranks)


def record_fit(
    rt: Runtime, job_id: int, fit: str, worlds: list[int], resumed_from: int | None
) -> None:
    """A finished fit, in the job's payload (``fits``): its worlds and the epoch it resumed from."""
    with rt.session() as s:
        job = s.get(Job, job_id)
        if job is not None:
            fits = [*(job.payload or {}).get("fits", [])]
            fits.append({"fit": fit, "worlds": worlds, "resumed_from_epoch": resumed_from})
            job.payload = {**(job.payload or {}), "fits": fits}
            flag_modified(job, "payload")
