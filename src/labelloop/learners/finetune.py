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

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from labelloop.distributed.trainer import N_BLOCKS, Trainer, TrainParams, build_tail
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

if TYPE_CHECKING:
    from labelloop.distributed.world import WorldConfig

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
    ``seed``); the pretrained weights of the built-in backbone, or none (to load a model into)."""
    net = backbones.get(BackboneSpec()).module if pretrained else None
    return build_tail(cut, n_classes, net, seed)


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

    def set_snapshot_dir(self, folder: Path | None, keep: int = 2, every_steps: int = 0) -> None:
        """Where each epoch's checkpoint goes (not a parameter: a training job's own folder), how
        many of the newest checkpoints are kept, and every how many steps one is written besides
        (0: at each epoch's end only)."""
        self._snapshot_dir = folder
        self._keep = keep
        self._every_steps = every_steps

    def set_world(self, world: WorldConfig | None) -> None:
        """Fit data-parallel over the ranks this launcher starts (needs a snapshot folder)."""
        self._world = world

    def clone(self) -> Self:
        twin = super().clone()
        twin._snapshot_dir = getattr(self, "_snapshot_dir", None)
        twin._keep = getattr(self, "_keep", 2)
        twin._every_steps = getattr(self, "_every_steps", 0)
        twin._world = getattr(self, "_world", None)
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
        folder = None
        if snapshot is not None:
            digest = hashlib.sha1(maps.tobytes(), usedforsecurity=False)
            digest.update(cls.astype(np.int64).tobytes())
            digest.update(repr(sorted(self.get_params().items())).encode())
            folder = snapshot / f"finetune-{digest.hexdigest()[:16]}"
        world: WorldConfig | None = getattr(self, "_world", None)
        if world is not None and folder is not None:
            return self._fit_world(world, folder, maps, cls)
        with torch.random.fork_rng():
            torch.manual_seed(int(self.seed))
            model = _tail(self.cut, int(cls.max()) + 1, pretrained=True, seed=int(self.seed))
            trainer = Trainer(TrainParams.of(self), maps, cls, self.shape_, model)
            trainer.fit_folder(
                folder,
                keep=getattr(self, "_keep", 2),
                every_steps=getattr(self, "_every_steps", 0),
            )
        self.model_ = trainer.model
        self.epochs_ = trainer.state.epoch
        self.resumed_from_ = trainer.resumed_from
        self.worlds_ = [1]
        return self

    def _fit_world(
        self, world: WorldConfig, folder: Path, maps: np.ndarray, cls: np.ndarray
    ) -> Self:
        """The same loop on every rank of a world (:mod:`.distributed`); rank 0's model back."""
        import torch

        from labelloop.distributed import world as worlds

        if not (folder / worlds.INPUT_FILE).is_file():
            init = _tail(self.cut, int(cls.max()) + 1, pretrained=True, seed=int(self.seed))
            worlds.write_input(folder, TrainParams.of(self), maps, cls, self.shape_, self.cut, init)
        outcome = worlds.run_world(folder, f"{world.run}/{folder.name}", world)
        final = torch.load(folder / worlds.FINAL_FILE, weights_only=False)
        model = _tail(self.cut, len(self.seen_), pretrained=False)
        model.load_state_dict(final["weights"])
        model.eval()
        self.model_ = model
        self.epochs_ = int(final["epochs"])
        self.resumed_from_ = final["resumed_from"]
        self.worlds_ = outcome.worlds
        self.epoch_seconds_ = list(final.get("epoch_seconds", []))
        if world.on_done is not None:
            world.on_done(f"{world.run}/{folder.name}", outcome.worlds, self.resumed_from_)
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
