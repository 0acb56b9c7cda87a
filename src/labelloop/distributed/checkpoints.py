"""Checkpoint files of a fit: ``epoch-<k>.ckpt`` in the fit's ``Snapshot/`` folder, written whole
(a temporary sibling and a rename) and pruned by the retention setting. Used by the trainer (rank
0 writes them) and by the world (it resumes from the newest)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINT_GLOB = "epoch-*.ckpt"


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch}.ckpt"


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The fit's epoch checkpoints, oldest first."""
    out = []
    for path in folder.glob(CHECKPOINT_GLOB):
        with contextlib.suppress(ValueError):
            out.append((int(path.stem.split("-", 1)[1]), path))
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
