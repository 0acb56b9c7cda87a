"""Distributed fine-tuning on CPU with gloo: ranks are real processes of this machine.

The fit is EfficientNet-Lite0's last blocks over 1x1 feature maps of 32-pixel photos (the same set
as the fine-tuning tests of tests/learners/test_photos.py), so an epoch takes a moment.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from labelloop.distributed import world as worlds
from labelloop.distributed.checkpoints import checkpoints
from labelloop.distributed.world import LocalLauncher, RankHandle, World, WorldConfig
from labelloop.kinds.classification import indicator
from labelloop.learners.base import Features
from labelloop.learners.finetune import FineTune
from tests.learners.test_photos import colour_squares, featurize
from tests.support import wait_until

#: Rank processes import PyTorch: minutes, not seconds, on a loaded 2-core machine.
pytestmark = [pytest.mark.distributed, pytest.mark.timeout(1200)]

NAMES = ["green", "red"]
PARAMS: dict[str, Any] = {
    "backbone": {"input_size": 32},
    "batch_size": 8,
    "lr": 3e-3,
    "patience": 100,
    "budget_s": 600.0,
}


@pytest.fixture(scope="module")
def photos() -> tuple[Features, np.ndarray, Features, np.ndarray]:
    """80 photos to train on and 200 others to score (one point of accuracy is two photos).

    With 80 labels one rank scores 0.995-1.0 whatever the seed (seeds 0-11, docs/BENCHMARKS.md);
    with 40, its seeds spread over several points, and one point would measure their lottery."""
    raws, labels = colour_squares(280, seed=3)
    X = featurize(FineTune(NAMES, **PARAMS), raws)
    Y = indicator([[x] for x in labels], NAMES)
    train, test = np.arange(80), np.arange(80, 280)
    return X.take(train), Y[train], X.take(test), Y[test]


@pytest.fixture(autouse=True)
def one_thread_per_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One PyTorch thread in every rank and in this process (the one-rank fit): on a loaded
    machine, threads of tiny steps wait on each other."""
    monkeypatch.setenv("LABELLOOP_TORCH_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def distributed(
    folder: Path, ranks: int, epochs: int, on_world: Any = None, every_steps: int = 0
) -> FineTune:
    learner = FineTune(NAMES, epochs=epochs, **PARAMS)
    learner.set_snapshot_dir(folder)
    ports = worlds.parse_ports("29400-29499")
    learner.set_world(
        WorldConfig(
            LocalLauncher(ranks), "task-1/job-1", ports, on_world=on_world, every_steps=every_steps
        )
    )
    return learner


def correct(learner: FineTune, X: Features, Y: np.ndarray) -> int:
    """How many of the photos the learner names right."""
    return int((learner.predict_proba(X).argmax(1) == Y.argmax(1)).sum())


def test_two_ranks_train_as_well_as_one(
    tmp_path: Path, photos: tuple[Features, np.ndarray, Features, np.ndarray]
) -> None:
    X, Y, X_test, Y_test = photos
    one = FineTune(NAMES, epochs=10, **PARAMS).fit(X, Y)
    two = distributed(tmp_path, 2, epochs=10).fit(X, Y)
    assert two.worlds_ == [2] and two.epochs_ == 10
    [folder] = tmp_path.iterdir()
    # Rank 0 kept the newest two epoch checkpoints, each whole.
    assert [k for k, _ in checkpoints(folder)] == [(9, 0), (10, 0)]
    saved = torch.load(folder / "epoch-10.ckpt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "sampler", "torch_rng", "global_rng"} <= set(saved)
    assert saved["sampler"] == {"epoch": 10, "offset": 0, "world": 2}
    right1, right2 = correct(one, X_test, Y_test), correct(two, X_test, Y_test)
    assert right1 >= 0.9 * len(Y_test), right1  # the task is learnt
    assert abs(right1 - right2) <= len(Y_test) // 100, (right1, right2)  # one point


def test_a_killed_rank_is_left_out_and_the_rest_resume_from_the_checkpoint(
    tmp_path: Path, photos: tuple[Features, np.ndarray, Features, np.ndarray]
) -> None:
    X, Y, X_test, Y_test = photos
    started: list[tuple[World, list[RankHandle]]] = []

    def on_world(world: World, handles: list[RankHandle]) -> None:
        started.append((world, handles))

    def kill_rank_1_in_epoch_1() -> None:
        # 72 photos to train: 9 steps an epoch; a checkpoint every 3 and at each epoch's end.
        wait_until(lambda: any(tmp_path.glob("*/epoch-1-step-3.ckpt")), 300, "no checkpoint")
        _world, handles = started[0]
        os.kill(handles[1].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_1_in_epoch_1, daemon=True)
    killer.start()
    learner = distributed(tmp_path, 2, epochs=8, on_world=on_world, every_steps=3).fit(X, Y)
    killer.join(1)
    assert learner.worlds_ == [2, 1]  # re-formed without the lost rank
    [final] = tmp_path.glob(f"*/{worlds.FINAL_FILE}")
    resumed = torch.load(final, weights_only=False)
    # From the checkpoint it had reached (epoch 1 step 3 or later), not from scratch.
    assert (resumed["resumed_from"], resumed["resumed_step"]) >= (1, 3)
    assert learner.resumed_from_ == resumed["resumed_from"] and learner.epochs_ == 8
    assert correct(learner, X_test, Y_test) >= 0.9 * len(Y_test)
