"""The training loop in this process (a world of one): checkpoints every N steps and a resume from
the middle of an epoch, and why a world's ranks train as one. No rank processes: seconds."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from labelloop.distributed.checkpoints import checkpoints
from labelloop.distributed.trainer import Trainer, TrainParams, build_tail

pytestmark = pytest.mark.distributed

#: 24 items: 2 for validation, 22 to train in batches of 4: six steps an epoch (the last of 2).
PARAMS = TrainParams(epochs=3, batch_size=4, lr=3e-3, patience=100, budget_s=600.0)
STEPS = 6
CUT, CHANNELS = 14, 192  # EfficientNet-Lite0's last two blocks take 192 channels


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One PyTorch thread: on a loaded machine, two threads of tiny steps wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Killed(Exception):
    """Stands for the process being killed."""


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(24) % 2
    maps = rng.normal(size=(24, CHANNELS)) + y[:, None] * 0.5
    return maps.astype(np.float16), y


@pytest.fixture(scope="module")
def init() -> dict[str, Any]:
    return copy.deepcopy(build_tail(CUT, 2, seed=0).state_dict())


def trainer(data: tuple[np.ndarray, np.ndarray], init: dict[str, Any]) -> Trainer:
    model = build_tail(CUT, 2, seed=0)
    model.load_state_dict(init)
    torch.manual_seed(0)
    return Trainer(PARAMS, data[0], data[1], (CHANNELS, 1, 1), model)


def die_at_training_step(t: Trainer, n: int) -> None:
    """Raise :class:`Killed` in the ``n``-th training forward (1-based) of ``t``."""
    seen = [0]

    def hook(module: torch.nn.Module, args: Any) -> None:
        if module.training:
            seen[0] += 1
            if seen[0] == n:
                raise Killed

    t.model.register_forward_pre_hook(hook)


def count_training_steps(t: Trainer) -> list[int]:
    seen = [0]

    def hook(module: torch.nn.Module, args: Any) -> None:
        seen[0] += module.training

    t.model.register_forward_pre_hook(hook)
    return seen


def test_a_fit_resumes_from_the_middle_of_an_epoch(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray], init: dict[str, Any]
) -> None:
    whole = trainer(data, init)
    whole.fit_folder(None)  # nobody interrupts it

    folder = tmp_path / "killed"
    first = trainer(data, init)
    die_at_training_step(first, STEPS + 3)  # in the second epoch, after its second step
    with pytest.raises(Killed):
        first.fit_folder(folder, keep=3, every_steps=2)
    # Every second step, and each epoch's end instead of its last step; the newest three kept.
    assert [p for p, _ in checkpoints(folder)] == [(0, 4), (1, 0), (1, 2)]
    saved = torch.load(folder / "epoch-1-step-2.ckpt", weights_only=False)
    assert saved["sampler"] == {"epoch": 1, "offset": 2, "world": 1}
    assert {"model", "optimizer", "scheduler", "torch_rng", "global_rng"} <= set(saved)

    again = trainer(data, init)  # the redelivered job
    steps = count_training_steps(again)
    again.fit_folder(folder, keep=3, every_steps=2)
    assert (again.resumed_from, again.resumed_step) == (1, 2)
    assert steps[0] == 3 * STEPS - (STEPS + 2)  # only the steps not done before
    # The same model as the fit nobody interrupted: the step, the samplers and every random
    # stream went on where they stood.
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[key], value, rtol=0, atol=1e-6)


def test_a_global_batch_trains_as_its_shards_do(
    data: tuple[np.ndarray, np.ndarray], init: dict[str, Any]
) -> None:
    """What makes N ranks one: with the epoch's batch-norm statistics, the gradient of a batch
    of 8 is the mean of its halves' (DDP averages the ranks' gradients), whatever is in them."""
    t = trainer(data, init)
    t.model.dropout.p, t.model.drop_connect = 0.0, 0.0  # no random masks to compare
    t.calibrate()
    t.train_mode()
    batch = t.train[:8]

    def gradient(idx: np.ndarray) -> torch.Tensor:
        t.model.zero_grad()
        x = t.tensor(idx, augment=False)
        target = torch.from_numpy(t.y[idx]).long()
        torch.nn.functional.cross_entropy(t.model(x), target).backward()  # type: ignore[no-untyped-call]
        return torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None])

    halves = (gradient(batch[0::2]) + gradient(batch[1::2])) / 2
    torch.testing.assert_close(halves, gradient(batch), rtol=1e-4, atol=1e-6)
    # Batch norm's statistics were the calibration's: training moved none of them.
    before = [m.running_var.clone() for m in t.norms]
    gradient(batch)
    assert all(torch.equal(a, m.running_var) for a, m in zip(before, t.norms, strict=True))
