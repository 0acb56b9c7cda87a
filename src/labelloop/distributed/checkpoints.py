"""Checkpoint files of a fit in its ``Snapshot/`` folder, written whole (a temporary sibling and a
rename) and pruned by the retention setting. Used by the trainer (rank 0 writes them) and by the
world (it resumes from the newest).

``epoch-<k>.ckpt`` is written after epoch ``k`` (k epochs done); with every-N-steps checkpoints,
``epoch-<k>-step-<s>.ckpt`` after ``s`` steps of the epoch that follows (k epochs and s steps
done). Both sort by ``(k, s)``: the newest is the furthest on."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINT_GLOB = "epoch-*.ckpt"
_NAME = re.compile(r"epoch-(\d+)(?:-step-(\d+))?")

#: Where a checkpoint stands: epochs done, and steps done of the next epoch.
Position = tuple[int, int]


def checkpoint_name(epoch: int, step: int = 0) -> str:
    return f"epoch-{epoch}-step-{step}.ckpt" if step else f"epoch-{epoch}.ckpt"


def checkpoints(folder: Path) -> list[tuple[Position, Path]]:
    """The fit's checkpoints, oldest first."""
    out = []
    for path in folder.glob(CHECKPOINT_GLOB):
        match = _NAME.fullmatch(path.stem)
        if match is not None:
            out.append(((int(match[1]), int(match[2] or 0)), path))
    return sorted(out)


def prune(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (the retention setting)."""
    for _, path in checkpoints(folder)[: -max(1, keep)]:
        with contextlib.suppress(OSError):
            path.unlink()


def write_whole(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file through a temporary sibling and a rename: readers see all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
