"""``finetune``: the last blocks of EfficientNet-Lite0 and a new head, trained on a task's labels.

The frozen part of the network (stem and the first ``16 - train_blocks`` blocks, where almost all of
the computation is) runs once per item as a featurizer: its 7x7 feature maps are cached in
``Preprocess/`` like any feature (float16). Training then runs only the last blocks, the head
convolution and a linear classifier over those maps, which makes fine-tuning affordable on CPUs.
Augmentation works on the cached maps: random horizontal flips (a convolutional network's maps of a
mirrored photo are close to mirrored maps), random shifts by one cell and channel dropout. Early
stopping on a held-out tenth of the labels keeps the best epoch.

:class:`Trainer` holds the loop in one place (model, optimizer and sampler set-up, one epoch, the
checkpoint) so that a distributed wrapper can reuse it. With a snapshot folder set (the training job
sets ``Snapshot/job-<id>.ckpt/``), every epoch writes a checkpoint (weights, optimizer, epoch, RNG
states, early-stopping state) atomically, and a fit of the same data resumes from it: a redelivered
job does not start over.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from labelloop.errors import InvalidInput
from labelloop.learners import backbones
from labelloop.learners.backbones import BackboneSpec
from labelloop.learners.base import (
    Features,
    Featurizer,
    Learner,
    indicator_to_classes,
    spread_columns,
)
from labelloop.learners.embedding import BackboneParam

N_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0
MAX_TRAIN_BLOCKS = 4  # blocks 12-15 run at the last resolution (7x7 at 224 pixels)


class MapsFeaturizer(Featurizer):
    """EfficientNet-Lite0's feature maps after block ``cut`` - 1 (float16, flattened)."""

    name = "backbone-maps"
    view = "maps"
    requires = backbones.BackboneSpec().packages()

    def __init__(self, cut: int, **spec: Any) -> None:
        self.cut = int(cut)
        self.spec = BackboneSpec.model_validate(spec)
        if self.spec.kind != "efficientnet-lite0":
            raise InvalidInput("fine-tuning needs the built-in efficientnet-lite0 backbone")

    @property
    def version(self) -> str:
        return f"maps-{self.spec.key()}-cut{self.cut}-v1"

    def config(self) -> dict[str, Any]:
        return {"cut": self.cut, **self.spec.model_dump(mode="json")}

    def transform(self, raws: Sequence[bytes]) -> np.ndarray:
        import torch

        if not raws:
            return np.zeros((0, 0), dtype=np.float16)
        size = self.spec.input_size
        images = np.stack([backbones.decode_rgb(r, size) for r in raws])
        backbone = backbones.get(self.spec)
        out = []
        for i in range(0, len(images), backbones.BATCH):
            x = torch.from_numpy(backbone.normalise(images[i : i + backbones.BATCH]))
            with backbone._lock, torch.inference_mode():
                m = backbone.module
                t = m._swish(m._bn0(m._conv_stem(x.to(backbone.device))))
                for block in m._blocks[: self.cut]:
                    t = block(t)
            out.append(t.float().cpu().numpy().reshape(len(x), -1).astype(np.float16))
        return np.concatenate(out)


def _tail(cut: int, n_classes: int, pretrained: bool, seed: int = 0) -> Any:
    """Blocks ``cut``.., the head convolution and a new linear classifier (initialised from
    ``seed``, whatever else used the random generator before)."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        net = backbones.get(BackboneSpec()).module
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            net = EfficientNet.from_name("efficientnet-lite0")
    torch.manual_seed(seed)

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(copy.deepcopy(list(net._blocks[cut:])))
            self.conv_head = copy.deepcopy(net._conv_head)
            self.bn = copy.deepcopy(net._bn1)
            self.act = copy.deepcopy(net._swish)
            self.dropout = torch.nn.Dropout(0.2)
            self.fc = torch.nn.Linear(self.bn.num_features, n_classes)
            self.drop_connect = float(net._global_params.drop_connect_rate or 0.0)

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


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights."""

    epoch: int = 0
    best_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0


class Trainer:
    """The fine-tuning loop: set-up, one epoch, validation, checkpoint save and load."""

    def __init__(self, learner: FineTune, maps: np.ndarray, y: np.ndarray, shape: tuple[int, ...]):
        import torch

        backbones.apply_threads()
        self.learner, self.shape = learner, shape
        self.maps, self.y = maps, y
        self.generator = torch.Generator().manual_seed(int(learner.seed))
        self.rng = np.random.default_rng(int(learner.seed))
        n = len(y)
        order = self.rng.permutation(n)
        n_val = round(n * float(learner.val_fraction)) if n >= 20 else 0
        self.val, self.train = order[:n_val], order[n_val:]
        self.model = _tail(learner.cut, int(y.max()) + 1, pretrained=True, seed=int(learner.seed))
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=float(learner.lr),
            weight_decay=float(learner.weight_decay),
        )
        self.state = TrainState()
        self.resumed_from: int | None = None
        self.best: dict[str, Any] = copy.deepcopy(self.model.state_dict())

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """This epoch's mini-batches (a distributed sampler would shard this order)."""
        order = np.random.default_rng([int(self.learner.seed), epoch]).permutation(self.train)
        bs = int(self.learner.batch_size)
        for i in range(0, len(order), bs):
            yield order[i : i + bs]

    def tensor(self, idx: np.ndarray, augment: bool) -> Any:
        import torch

        x = torch.from_numpy(self.maps[idx].astype(np.float32).reshape(len(idx), *self.shape))
        if augment:
            flip = torch.rand(len(idx), generator=self.generator) < 0.5
            x[flip] = x[flip].flip(-1)
            dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=self.generator))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            keep = (torch.rand(len(idx), x.shape[1], 1, 1, generator=self.generator) > 0.1).float()
            x = x * keep / 0.9
        return x

    def train_epoch(self, epoch: int) -> float:
        import torch

        self.model.train()
        total, seen = 0.0, 0
        for idx in self.batches(epoch):
            x = self.tensor(idx, augment=True)
            target = torch.from_numpy(self.y[idx]).long()
            self.optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.model(x), target, label_smoothing=0.1)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        return total / max(seen, 1)

    def validate(self) -> float:
        import torch

        if len(self.val) == 0:
            return float("nan")
        self.model.eval()
        with torch.inference_mode():
            logits = self.model(self.tensor(self.val, augment=False))
            target = torch.from_numpy(self.y[self.val]).long()
            return float(torch.nn.functional.cross_entropy(logits, target))

    def fit(self, checkpoint: Path | None) -> None:
        learner = self.learner
        if checkpoint is not None and checkpoint.is_file():
            self.load(checkpoint)
        started = time.perf_counter()
        while self.state.epoch < int(learner.epochs):
            epoch = self.state.epoch
            self.train_epoch(epoch)
            val = self.validate()
            if len(self.val) == 0 or val < self.state.best_loss - 1e-4:
                self.state.best_loss = val if len(self.val) else self.state.best_loss
                self.state.best_epoch, self.state.bad_epochs = epoch, 0
                self.best = copy.deepcopy(self.model.state_dict())
            else:
                self.state.bad_epochs += 1
            self.state.epoch = epoch + 1
            if checkpoint is not None:
                self.save(checkpoint)
            if self.state.bad_epochs >= int(learner.patience):
                break
            if time.perf_counter() - started > float(learner.budget_s):
                break
        self.model.load_state_dict(self.best)
        self.model.eval()

    def save(self, path: Path) -> None:
        """Everything needed to go on from the next epoch, written whole (temp file + rename)."""
        import torch

        payload = {
            "model": self.model.state_dict(),
            "best": self.best,
            "optimizer": self.optimizer.state_dict(),
            "state": self.state.__dict__,
            "torch_rng": self.generator.get_state(),
            "global_rng": torch.get_rng_state(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def load(self, path: Path) -> None:
        import torch

        try:
            payload = torch.load(path, weights_only=False)
        except (OSError, RuntimeError, EOFError):
            return  # an unreadable checkpoint: start over
        self.model.load_state_dict(payload["model"])
        self.best = payload["best"]
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = TrainState(**payload["state"])
        self.generator.set_state(payload["torch_rng"])
        torch.set_rng_state(payload["global_rng"])
        self.resumed_from = self.state.epoch


class FineTune(Learner):
    """EfficientNet-Lite0's last ``train_blocks`` blocks and a new head, fine-tuned (multi-class).

    Costly, so the training job scores it on one fold only (:mod:`.choice`) and only once a task
    has enough labels (``auto``'s ``finetune_min_labels``).
    """

    name = "finetune"
    holdout_only: ClassVar[bool] = True

    def __init__(
        self,
        labels: Sequence[str],
        multi_label: bool = False,
        *,
        backbone: BackboneParam = None,
        train_blocks: int = 2,
        epochs: int = 8,
        batch_size: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        patience: int = 2,
        val_fraction: float = 0.1,
        budget_s: float = 60.0,
        seed: int = 0,
    ) -> None:
        super().__init__(labels, multi_label)
        self.backbone = backbone
        self.train_blocks = train_blocks
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.val_fraction = val_fraction
        self.budget_s = budget_s
        self.seed = seed

    @property
    def cut(self) -> int:
        if not 1 <= int(self.train_blocks) <= MAX_TRAIN_BLOCKS:
            raise InvalidInput(f"train_blocks must be between 1 and {MAX_TRAIN_BLOCKS}")
        return N_BLOCKS - int(self.train_blocks)

    def make_featurizers(self) -> list[Featurizer]:
        if self.multi_label:
            raise InvalidInput("the finetune learner serves multi-class tasks only")
        spec = backbones.default_spec() if self.backbone is None else backbones.parse(self.backbone)
        if spec is None:
            raise InvalidInput("fine-tuning needs an image backbone; none is configured")
        return [MapsFeaturizer(self.cut, **spec.model_dump())]

    def set_snapshot_dir(self, folder: Path | None) -> None:
        """Where each epoch's checkpoint goes (not a parameter: a training job's own folder)."""
        self._snapshot_dir = folder

    def clone(self) -> Self:
        twin = super().clone()
        twin._snapshot_dir = getattr(self, "_snapshot_dir", None)
        return twin

    def _shape(self, maps: np.ndarray) -> tuple[int, int, int]:
        spec = self.featurizers()[0]
        assert isinstance(spec, MapsFeaturizer)
        side = spec.spec.input_size // 32
        channels = maps.shape[1] // (side * side)
        return (channels, side, side)

    def fit(
        self, X: Features, Y: np.ndarray, pool: Features | None = None, init: Learner | None = None
    ) -> Self:
        import torch

        maps = X.array(MapsFeaturizer.view)
        y = indicator_to_classes(Y)
        self.seen_ = np.unique(y)
        self.shape_ = self._shape(maps)
        cls = np.searchsorted(self.seen_, y)
        snapshot: Path | None = getattr(self, "_snapshot_dir", None)
        checkpoint = None
        if snapshot is not None:
            digest = hashlib.sha1(maps.tobytes(), usedforsecurity=False)
            digest.update(cls.astype(np.int64).tobytes())
            digest.update(repr(sorted(self.get_params().items())).encode())
            checkpoint = snapshot / f"finetune-{digest.hexdigest()[:16]}.pt"
        with torch.random.fork_rng():
            torch.manual_seed(int(self.seed))
            trainer = Trainer(self, maps, cls, self.shape_)
            trainer.fit(checkpoint)
        self.model_ = trainer.model
        self.epochs_ = trainer.state.epoch
        self.resumed_from_ = trainer.resumed_from
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        import torch

        maps = X.array(MapsFeaturizer.view)
        n = len(self.labels)
        if len(maps) == 0:
            return np.zeros((0, n))
        x = torch.from_numpy(maps.astype(np.float32).reshape(len(maps), *self.shape_))
        self.model_.eval()
        with torch.inference_mode():
            p = torch.softmax(self.model_(x), dim=1).double().numpy()
        return spread_columns(p, self.seen_, n)

    def _state(self) -> Any:
        weights = {k: v.detach().cpu().numpy() for k, v in self.model_.state_dict().items()}
        return {"seen": self.seen_, "shape": self.shape_, "weights": weights}

    def _restore(self, state: Any) -> None:
        import torch

        self.seen_, self.shape_ = state["seen"], tuple(state["shape"])
        model = _tail(self.cut, len(self.seen_), pretrained=False)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state["weights"].items()})
        model.eval()
        self.model_ = model
