"""The fine-tuning loop of EfficientNet-Lite0's last blocks, for one process or every rank of a
world (:mod:`.world`).

It imports only PyTorch, NumPy and the EfficientNet architecture, not the rest of labelloop: a rank
process starts in the time PyTorch takes to import.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.distributed.checkpoints import checkpoint_name, checkpoints, prune, write_whole

log = logging.getLogger(__name__)

N_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0
#: Training items whose batch-norm statistics each epoch trains with (:meth:`Trainer.calibrate`),
#: in chunks of this many.
CALIBRATION_ITEMS = 1024
CALIBRATION_CHUNK = 256


def build_tail(cut: int, n_classes: int, net: Any | None = None, seed: int = 0) -> Any:
    """Blocks ``cut``.. of ``net`` (an EfficientNet-Lite0; None: one without weights), the head
    convolution and a new linear classifier initialised from ``seed``."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    if net is None:
        with contextlib.redirect_stdout(io.StringIO()):
            net = EfficientNet.from_name("efficientnet-lite0")
    src: Any = net
    torch.manual_seed(seed)

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(copy.deepcopy(list(src._blocks[cut:])))
            self.conv_head = copy.deepcopy(src._conv_head)
            self.bn = copy.deepcopy(src._bn1)
            self.act = copy.deepcopy(src._swish)
            self.dropout = torch.nn.Dropout(0.2)
            self.fc = torch.nn.Linear(self.bn.num_features, n_classes)
            self.drop_connect = float(src._global_params.drop_connect_rate or 0.0)

        def forward(self, x: Any) -> Any:
            for i, block in enumerate(self.blocks):
                rate = self.drop_connect * (cut + i) / N_BLOCKS if self.training else None
                x = block(x, drop_connect_rate=rate)
            x = self.act(self.bn(self.conv_head(x))).mean((2, 3))
            return self.fc(self.dropout(x))

    tail = Tail()
    for p in tail.parameters():
        p.requires_grad_(True)
    return tail


@dataclass(frozen=True)
class TrainParams:
    """The fine-tune learner's training parameters (what every rank needs of it)."""

    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 2
    val_fraction: float = 0.1
    budget_s: float = 60.0
    seed: int = 0

    @classmethod
    def of(cls, learner: Any) -> TrainParams:
        return cls(**{k: getattr(learner, k) for k in asdict(cls())})


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights."""

    #: Epochs done, and steps done of the next one (a mid-epoch checkpoint's position).
    epoch: int = 0
    step: int = 0
    best_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0


class Trainer:
    """The fine-tuning loop: set-up, one epoch, validation, checkpoint save and load.

    The same loop serves a world of one (in the job's process) and every rank of a distributed
    fit (:mod:`.distributed`), with the same optimisation whatever the world's size: with
    ``world`` > 1 the model is wrapped in ``DistributedDataParallel`` (gradients averaged), each
    rank reads its ``DistributedSampler`` shard of every epoch in batches of ``batch_size /
    world`` (the global batch and the learning rate stay those of one rank), batch norm uses
    statistics fixed for the epoch (:meth:`calibrate`), not the batch's, and the augmentation of
    the global batch is drawn alike on every rank. Rank 0 decides early stopping for all and
    writes the checkpoints.
    """

    def __init__(
        self,
        params: TrainParams,
        maps: np.ndarray,
        y: np.ndarray,
        shape: tuple[int, ...],
        model: Any,
        *,
        rank: int = 0,
        world: int = 1,
        device: str = "cpu",
    ):
        import torch

        self.params, self.shape = params, shape
        self.maps, self.y = maps, y
        self.rank, self.world, self.device = rank, world, device
        # The same stream on every rank: each draws the global batch's augmentation, applies its rows.
        self.generator = torch.Generator().manual_seed(int(params.seed))
        self.rng = np.random.default_rng(int(params.seed))
        n = len(y)
        order = self.rng.permutation(n)
        n_val = round(n * float(params.val_fraction)) if n >= 20 else 0
        self.val, self.train = order[:n_val], order[n_val:]
        self.model = model.to(device)
        self.norms = [m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=float(params.lr),
            weight_decay=float(params.weight_decay),
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, int(params.epochs)), eta_min=0.1 * float(params.lr)
        )
        self.net: Any = self.model  # what training calls: the model, or its DDP wrapper
        self.state = TrainState()
        self.resumed_from: int | None = None
        #: The step of its epoch the fit resumed at (0: at the epoch's start).
        self.resumed_step = 0
        #: Where :meth:`fit_folder` writes checkpoints, and every how many steps besides each
        #: epoch's end (0: at each epoch's end only).
        self.folder: Path | None = None
        self.keep, self.every_steps = 2, 0
        #: Seconds of each training epoch this process ran (for the benchmarks).
        self.epoch_seconds: list[float] = []
        self.best: dict[str, Any] = copy.deepcopy(self.model.state_dict())

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """This rank's mini-batches of the epoch: its ``DistributedSampler`` shard, in batches of
        ``batch_size / world`` (every rank gets the same number of batches)."""
        from torch.utils.data import DistributedSampler

        sampler: DistributedSampler[int] = DistributedSampler(
            range(len(self.train)),  # type: ignore[arg-type]
            num_replicas=self.world,
            rank=self.rank,
            shuffle=True,
            seed=int(self.params.seed),
        )
        sampler.set_epoch(epoch)
        order = self.train[np.fromiter(iter(sampler), dtype=np.int64)]
        bs = max(1, -(-int(self.params.batch_size) // self.world))
        starts = list(range(0, len(order), bs))
        if len(starts) > 1 and len(order) - starts[-1] == 1:
            starts.pop()  # a batch of one cannot train batch norm: it joins the one before
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(order)
            yield order[start:end]

    def tensor(self, idx: np.ndarray, augment: bool) -> Any:
        """The maps of ``idx`` (this rank's rows of a global batch), augmented: flips and channel
        dropout drawn for the whole global batch (rank ``r`` takes rows ``r``, ``r + world``..,
        the rows its sampler shard holds), one shift per global batch."""
        import torch

        x = torch.from_numpy(self.maps[idx].astype(np.float32).reshape(len(idx), *self.shape))
        if augment:
            n, mine = len(idx) * self.world, slice(self.rank, None, self.world)
            flip = (torch.rand(n, generator=self.generator) < 0.5)[mine]
            x[flip] = x[flip].flip(-1)
            dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=self.generator))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            keep = torch.rand(n, x.shape[1], 1, 1, generator=self.generator)[mine] > 0.1
            x = x * keep.float() / 0.9
        return x.to(self.device)

    def train_epoch(self, epoch: int) -> float:
        """One epoch from the step the state stands at (a resumed mid-epoch checkpoint's on), with
        a checkpoint every ``every_steps`` steps before its last."""
        import torch

        if self.state.step == 0:  # mid-epoch, the checkpoint holds the epoch's statistics
            self.calibrate()
        self.train_mode()
        total, seen = 0.0, 0
        batches = list(self.batches(epoch))
        for step, idx in enumerate(batches):
            if step < self.state.step:
                continue  # done before the checkpoint this fit resumed from
            x = self.tensor(idx, augment=True)
            target = torch.from_numpy(self.y[idx]).long().to(self.device)
            self.optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.net(x), target, label_smoothing=0.1)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
            self.state.step = step + 1
            every = self.every_steps
            # The last step's checkpoint is the epoch's own, written after validation.
            if every and self.state.step % every == 0 and self.state.step < len(batches):
                self.checkpoint()
        self.scheduler.step()
        self.state.step = 0
        return total / max(seen, 1)

    def train_mode(self) -> None:
        """As an epoch trains: dropout and drop-connect on, batch norm on the epoch's statistics
        (not the batch's)."""
        self.net.train()
        for m in self.norms:
            m.eval()

    def calibrate(self) -> None:
        """Batch norm's statistics for the weights as they stand, over up to
        ``CALIBRATION_ITEMS`` training items (the same ones on every rank), kept fixed for the
        epoch that follows.

        Training then normalises every item alike, whoever else is in its batch: a rank's
        gradients on its ``batch_size / world`` items average to one rank's on the global batch,
        and the model evaluated (validation, checkpoints, the fitted model) normalises as it was
        trained. (Batch statistics of a few items per rank would make the model depend on the
        world's size; the pretrained running averages, ImageNet's at 224 pixels, do not fit a
        task's maps.)
        """
        import torch

        momenta = [m.momentum for m in self.norms]
        self.model.eval()  # no dropout, no drop-connect: only batch norm's statistics move
        for m in self.norms:
            m.reset_running_stats()
            m.momentum = None  # an average over the calibration chunks
            m.train()
        items = self.train[:CALIBRATION_ITEMS]
        with torch.no_grad():
            for start in range(0, len(items), CALIBRATION_CHUNK):
                chunk = items[start : start + CALIBRATION_CHUNK]
                if len(chunk) > 1:  # a statistic of one item is no spread
                    self.model(self.tensor(chunk, augment=False))
        for m, momentum in zip(self.norms, momenta, strict=True):
            m.momentum = momentum
        self.model.eval()

    def validate(self) -> float:
        import torch

        if len(self.val) == 0:
            return float("nan")
        self.model.eval()
        with torch.inference_mode():
            logits = self.model(self.tensor(self.val, augment=False))
            target = torch.from_numpy(self.y[self.val]).long().to(self.device)
            return float(torch.nn.functional.cross_entropy(logits, target))

    def _agree(self, stop: bool) -> bool:
        """Rank 0's decision, for every rank (they must run the same number of epochs)."""
        if self.world == 1:
            return stop
        import torch.distributed as dist

        box = [stop]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def fit(self, checkpoint: Path | None) -> None:
        """Train (``checkpoint``: the folder of this fit's checkpoint files, or None)."""
        self.fit_folder(checkpoint)

    def fit_folder(self, folder: Path | None, keep: int = 2, every_steps: int = 0) -> None:
        """Train from the newest readable checkpoint in ``folder`` (if any), writing one there
        after every epoch and every ``every_steps`` steps (0: epochs only), ``keep`` of them."""
        self.folder, self.keep, self.every_steps = folder, keep, max(0, int(every_steps))
        if folder is not None:
            for _, path in reversed(checkpoints(folder)):
                if self.load(path):
                    break
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model)
        started = time.perf_counter()
        while self.state.epoch < int(self.params.epochs):
            epoch = self.state.epoch
            began = time.perf_counter()
            loss = self.train_epoch(epoch)
            self.epoch_seconds.append(time.perf_counter() - began)
            log.info(
                "rank %s/%s: epoch %s, loss %.4f, %.2f s",
                self.rank,
                self.world,
                epoch,
                loss,
                self.epoch_seconds[-1],
            )
            if self.rank == 0:
                self._keep_best()
            self.state.epoch = epoch + 1
            self.checkpoint()
            stop = self.state.bad_epochs >= int(self.params.patience)
            stop = stop or time.perf_counter() - started > float(self.params.budget_s)
            if self._agree(stop):
                break
        self.model.load_state_dict(self.best)
        self.model.eval()

    def _keep_best(self) -> None:
        """Rank 0, after an epoch: validate, keep the best weights, count the epochs without."""
        val = self.validate()
        if len(self.val) == 0 or val < self.state.best_loss - 1e-4:
            self.state.best_loss = val if len(self.val) else self.state.best_loss
            self.state.best_epoch, self.state.bad_epochs = self.state.epoch, 0
            self.best = copy.deepcopy(self.model.state_dict())
        else:
            self.state.bad_epochs += 1

    def checkpoint(self) -> None:
        """Rank 0: the state as it stands into the fit's folder (none: nothing), pruned."""
        if self.folder is not None and self.rank == 0:
            self.save(self.folder / checkpoint_name(self.state.epoch, self.state.step))
            prune(self.folder, self.keep)

    def save(self, path: Path) -> None:
        """Everything needed to go on from where the fit stands, written whole (temp file +
        rename). Every rank's random streams are alike, so rank 0's stand for all."""
        import torch

        payload = {
            "model": self.model.state_dict(),
            "best": self.best,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": self.state.__dict__,
            # Where the samplers stand: ``offset`` global steps (batches of every rank) of the
            # epoch are done; the same place in a world of another size.
            "sampler": {"epoch": self.state.epoch, "offset": self.state.step, "world": self.world},
            "torch_rng": self.generator.get_state(),
            "global_rng": torch.get_rng_state(),
        }
        write_whole(path, lambda fh: torch.save(payload, fh))

    def load(self, path: Path) -> bool:
        """Go on from a checkpoint; False (and nothing changed) when it cannot be read."""
        import torch

        try:
            payload = torch.load(path, weights_only=False, map_location=self.device)
        except (OSError, RuntimeError, EOFError):
            return False  # an unreadable checkpoint: an older one, or start over
        self.model.load_state_dict(payload["model"])
        self.best = payload["best"]
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.state = TrainState(**payload["state"])
        self.generator.set_state(payload["torch_rng"].cpu())
        torch.set_rng_state(payload["global_rng"].cpu())
        self.resumed_from, self.resumed_step = self.state.epoch, self.state.step
        return True

    def save_final(self, path: Path) -> None:
        """The fitted model (its best epoch) and how the run went, for the leader."""
        import torch

        payload = {
            "weights": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "epochs": self.state.epoch,
            "resumed_from": self.resumed_from,
            "resumed_step": self.resumed_step,
            "world": self.world,
            "epoch_seconds": self.epoch_seconds,
        }
        write_whole(path, lambda fh: torch.save(payload, fh))
