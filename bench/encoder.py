"""The sentence encoder's runtimes: CPU time per text, closeness to the original, TREC-6 accuracy.

Each option encodes the same TREC-6 questions on one thread (CPU time, ``time.process_time``, so
the other processes of a busy machine do not count), in alternating repetitions (A B C D A B C D);
its vectors are compared with the PyTorch original's (cosine similarity), and the text learner
(``tfidf-svm``: TF-IDF words, characters, lead words and the sentence embeddings) is trained on
the first ``--labels`` training questions and scored on TREC's 500 held-out ones, as
``bench.labelstudio_peer`` does. Options: the shipped runtimes (``torch``, ``onnx``,
``onnx-int8``) and, for comparison only, PyTorch's dynamic int8 quantisation of the Linear layers
(``torch-int8``) and no embeddings at all.

    python -m bench.encoder --texts 512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.datasets import SHARED, trec
from labelloop.kinds.classification import indicator
from labelloop.learners import sentence
from labelloop.learners.base import Features
from labelloop.learners.text import TextFeaturizer, TfidfSVM

Encode = Callable[[Sequence[str]], np.ndarray]


def torch_int8() -> Encode:
    """The original with its Linear layers dynamically quantised to int8 by PyTorch."""
    import copy

    import torch

    model = copy.deepcopy(sentence.torch_model())
    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def encode(texts: Sequence[str]) -> np.ndarray:
        out = model.encode(
            list(texts),
            batch_size=sentence.BATCH,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    return encode


def options() -> dict[str, Encode]:
    return {
        "torch": lambda t: sentence.encode(t, "torch"),
        "torch-int8": torch_int8(),
        "onnx": lambda t: sentence.encode(t, "onnx"),
        "onnx-int8": lambda t: sentence.encode(t, "onnx-int8"),
    }


def cpu_ms_per_text(encode: Encode, texts: Sequence[str]) -> float:
    t0 = time.process_time()
    encode(texts)
    return 1000 * (time.process_time() - t0) / len(texts)


def accuracy(
    train: Sequence[str],
    y: Sequence[str],
    test: Sequence[str],
    truth: Sequence[str],
    labels: list[str],
    encode: Encode | None,
) -> float:
    def features(texts: Sequence[str]) -> Features:
        views: dict[str, Any] = {"text": TextFeaturizer().transform([t.encode() for t in texts])}
        if encode is not None:
            views["minilm"] = encode(views["text"])
        return Features(views)

    learner = TfidfSVM(labels, embeddings=encode is not None)
    learner.fit(features(train), indicator([[v] for v in y], labels))
    p = learner.predict_proba(features(test))
    return float(np.mean([labels[i] == t for i, t in zip(p.argmax(axis=1), truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=512, help="questions timed per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/encoder.json"))
    args = parser.parse_args()

    import os

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sentence.configure(Path(tempfile.mkdtemp(prefix="bench-encoder-")))
    sentence._ONNX.update(  # one thread each, like the torch options
        {r: sentence.OnnxEncoder(r, threads=1) for r in ("onnx", "onnx-int8")}
    )
    data = trec()
    test = trec(SHARED / "trec" / "TREC_10.label")
    timed = data.data[-args.texts :]  # not the training questions
    encoders = options()
    for encode in encoders.values():
        encode(timed[:64])  # warm: first-call allocations do not count
    ms: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.repeats):
        for name, encode in encoders.items():
            ms[name].append(cpu_ms_per_text(encode, timed))
    reference = encoders["torch"](timed)
    report: dict[str, Any] = {"load_average": os.getloadavg(), "texts": args.texts, "options": {}}
    train, y = data.data[: args.labels], data.truth[: args.labels]
    for name, encode in [*encoders.items(), ("no embeddings", None)]:
        row: dict[str, Any] = {}
        if encode is not None:
            cos = (encode(timed) * reference).sum(axis=1)
            row |= {
                "cpu_ms_per_text": statistics.median(ms[name]),
                "cpu_ms_runs": ms[name],
                "cosine_min": float(cos.min()),
                "cosine_mean": float(cos.mean()),
            }
        row["trec_accuracy"] = accuracy(train, y, test.data, test.truth, data.labels, encode)
        report["options"][name] = row
        print(name, json.dumps(row), flush=True)
    report["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
