"""Static token embeddings (``learners/static.py``): table build time, recipes, accuracy, CPU.

1. Computes the per-piece encoder outputs the table is made of (the mean and the token pooling
   from one pass, as ``static.encode_pieces`` does for one; one PyTorch thread), timing it (CPU
   and wall).
2. Scores table recipes (centring, principal components, weighting; without the lead vector) and
   the weight of the static block inside ``tfidf-svm``, then the lead vector (first k words; on
   five disjoint sets of labels): trained on the first ``--labels`` TREC-6 training questions,
   scored on TREC's 500 held-out ones (``TREC_10.label``), as ``bench.labelstudio_peer`` does; and
   the static vectors alone (a logistic regression) for reference.
3. CPU time (``time.process_time``) per text of each configuration's featurization and of the
   whole predict (featurize + ``predict_proba``), batches of 64, alternating repetitions
   (A B C A B C), medians: TF-IDF only (the fast configuration), TF-IDF + static (the default),
   TF-IDF + the full sentence encoder on ONNX Runtime int8 (one thread).
4. The same three configurations on SMS spam (the first ``--labels`` messages labelled, the
   rest held out): accuracy and the spam class's F1.

    python -m bench.static_embeddings --labels 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.datasets import SHARED, Dataset, sms, trec
from labelloop.kinds.classification import indicator
from labelloop.learners import sentence, static
from labelloop.learners.base import Features
from labelloop.learners.text import TextFeaturizer, TfidfSVM

Encode = Callable[[Sequence[str]], np.ndarray]


def texts_of(raw: Sequence[str]) -> list[str]:
    return TextFeaturizer().transform([t.encode() for t in raw])


def fit_score(
    train: Sequence[str],
    y: Sequence[str],
    test: Sequence[str],
    truth: Sequence[str],
    labels: list[str],
    encode: Encode | None,
    view: str = "static",
    scale: float = 1.0,
) -> tuple[float, TfidfSVM, np.ndarray]:
    """Accuracy of ``tfidf-svm`` with the vectors of ``encode`` (None: TF-IDF only)."""
    encoder = "static" if view == "static" else "onnx-int8"

    def features(raw: Sequence[str]) -> Features:
        views: dict[str, Any] = {"text": texts_of(raw)}
        if encode is not None:
            views[view] = scale * encode(views["text"])
        return Features(views)

    learner = TfidfSVM(labels, embeddings=encode is not None, encoder=encoder)
    learner.fit(features(train), indicator([[v] for v in y], labels))
    p = learner.predict_proba(features(test))
    guess = np.asarray([labels[i] for i in p.argmax(axis=1)])
    return float(np.mean(guess == np.asarray(truth))), learner, guess


def alone(
    train: Sequence[str], y: Sequence[str], test: Sequence[str], truth: Sequence[str], enc: Encode
) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=10.0, max_iter=3000).fit(enc(texts_of(train)), list(y))
    return float(np.mean(model.predict(enc(texts_of(test))) == np.asarray(truth)))


def recipes(
    data: Dataset, test: Dataset, n: int, raws: dict[str, np.ndarray], special: list[int]
) -> list[dict[str, Any]]:
    train, y = data.data[:n], data.truth[:n]
    options = [
        static.Recipe(center=False, weighting="uniform"),
        static.Recipe(weighting="uniform"),
        static.Recipe(center=False),
        static.Recipe(),
        static.Recipe(sif_a=1e-4),
        static.Recipe(sif_a=1e-2),
        static.Recipe(dims=256),
        static.Recipe(dims=128),
        static.Recipe(pooling="token"),
    ]
    out = []
    for recipe in options:
        rows = static.finish(raws[recipe.pooling], recipe, special)
        enc = static.StaticEncoder(rows, lead=0).encode
        row: dict[str, Any] = {"recipe": asdict(recipe), "key": recipe.key()}
        row["static_alone"] = alone(train, y, test.data, test.truth, enc)
        for scale in (1.0, 2.0):
            acc, _, _ = fit_score(train, y, test.data, test.truth, data.labels, enc, scale=scale)
            row[f"tfidf_static_x{scale:g}"] = acc
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def leads(data: Dataset, test: Dataset, n: int, rows: np.ndarray) -> dict[str, Any]:
    """The shipped recipe with a second vector of the first k words (k = 0: none), trained on
    five disjoint sets of ``n`` labels (the first 5n training questions), scored on TREC_10:
    one set of 500 questions scatters by a point or two between options."""
    out: dict[str, Any] = {}
    for k in (None, 0, 1, 2, 3):
        enc = None if k is None else static.StaticEncoder(rows, lead=k).encode
        scores = []
        for split in range(5):
            part = slice(split * n, (split + 1) * n)
            acc, _, _ = fit_score(
                data.data[part], data.truth[part], test.data, test.truth, data.labels, enc
            )
            scores.append(acc)
        name = "fast" if k is None else f"lead{k}"
        out[name] = {"mean": float(np.mean(scores)), "splits": scores}
        print("lead", name, json.dumps(out[name]), flush=True)
    return out


def cpu_ms(fn: Callable[[], Any], n: int) -> float:
    t0 = time.process_time()
    fn()
    return 1000 * (time.process_time() - t0) / n


def costs(
    data: Dataset, n: int, labels: list[str], configs: dict[str, Encode | None], repeats: int
) -> dict[str, Any]:
    """CPU ms per text of featurization and of the whole predict, batches of 64."""
    train, y = data.data[:n], data.truth[:n]
    timed = [texts_of(data.data[-512:][i : i + 64]) for i in range(0, 512, 64)]
    learners = {}
    for name, enc in configs.items():
        view = "minilm" if name == "minilm-int8" else "static"
        _, learners[name], _ = fit_score(train, y, train[:1], y[:1], labels, enc, view)

    def featurize(name: str, enc: Encode | None) -> list[Features]:
        learner = learners[name]
        out = []
        for batch in timed:
            views: dict[str, Any] = {"text": batch}
            if enc is not None:
                views[learner.views()[1]] = enc(batch)
            out.append(Features(views))
        return out

    def embed_only(enc: Encode | None) -> None:
        if enc is not None:
            for batch in timed:
                enc(batch)

    def tfidf_only(name: str) -> None:
        for batch in timed:
            learners[name].text_.transform(batch)

    def predict(name: str, enc: Encode | None) -> None:
        for X in featurize(name, enc):
            learners[name].predict_proba(X)

    for name, enc in configs.items():  # warm
        predict(name, enc)
    ms: dict[str, dict[str, list[float]]] = {
        name: {"embeddings": [], "tfidf": [], "predict": []} for name in configs
    }
    for _ in range(repeats):
        for name, enc in configs.items():
            ms[name]["embeddings"].append(cpu_ms(lambda e=enc: embed_only(e), 512))  # type: ignore[misc]
            ms[name]["tfidf"].append(cpu_ms(lambda m=name: tfidf_only(m), 512))  # type: ignore[misc]
            ms[name]["predict"].append(
                cpu_ms(lambda m=name, e=enc: predict(m, e), 512)  # type: ignore[misc]
            )
    return {
        name: {f"{k}_cpu_ms_per_text": statistics.median(v) for k, v in parts.items()}
        | {f"{k}_runs": v for k, v in parts.items()}
        for name, parts in ms.items()
    }


def spam_scores(data: Dataset, n: int, configs: dict[str, Encode | None]) -> dict[str, Any]:
    train, y = data.data[:n], data.truth[:n]
    test, truth = data.data[n:], data.truth[n:]
    out = {}
    for name, enc in configs.items():
        view = "minilm" if name == "minilm-int8" else "static"
        acc, _, guess = fit_score(train, y, test, truth, data.labels, enc, view)
        t = np.asarray(truth)
        tp = float(np.sum((guess == "spam") & (t == "spam")))
        f1 = 2 * tp / max(float(np.sum(guess == "spam") + np.sum(t == "spam")), 1.0)
        out[name] = {"accuracy": acc, "spam_f1": f1}
        print("sms", name, json.dumps(out[name]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pieces", type=Path, help="reuse per-piece outputs saved by a run")
    parser.add_argument("--skip-recipes", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/static_embeddings.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    folder = Path(tempfile.mkdtemp(prefix="bench-static-"))
    sentence.configure(folder)
    report: dict[str, Any] = {"load_average": os.getloadavg(), "labels": args.labels}
    special = static._special_ids(static._tokenizer())
    build: dict[str, Any] = {}
    saved = args.pieces / "mean.npy" if args.pieces else None
    if saved is not None and saved.exists():
        raws = {p: np.load(args.pieces / f"{p}.npy") for p in ("mean", "token")}
    else:
        c0, w0 = time.process_time(), time.perf_counter()
        raws = static.encode_pieces_pooled()
        build = {
            "cpu_s": time.process_time() - c0,
            "wall_s": time.perf_counter() - w0,
            "load_average": os.getloadavg(),
        }
        print("pieces", json.dumps(build), flush=True)
        if args.pieces:
            args.pieces.mkdir(parents=True, exist_ok=True)
            for p, a in raws.items():
                np.save(args.pieces / f"{p}.npy", a)
    report["build"] = build
    c0 = time.process_time()
    rows = static.finish(raws["mean"], static.RECIPE, special)
    report["finish_cpu_s"] = time.process_time() - c0
    report["shipped_recipe"] = static.RECIPE.key()

    data, test = trec(), trec(SHARED / "trec" / "TREC_10.label")
    if not args.skip_recipes:
        report["recipes"] = recipes(data, test, args.labels, raws, special)

    shipped = static.StaticEncoder(rows, static.LEAD).encode
    if not args.skip_recipes:
        report["lead"] = leads(data, test, args.labels, rows)
    sentence._ONNX["onnx-int8"] = sentence.OnnxEncoder("onnx-int8", threads=1)

    def int8(texts: Sequence[str]) -> np.ndarray:
        return sentence.encode(texts, "onnx-int8")

    configs: dict[str, Encode | None] = {"fast": None, "static": shipped, "minilm-int8": int8}
    report["trec"] = {}
    n = args.labels
    for name, enc in configs.items():
        view = "minilm" if name == "minilm-int8" else "static"
        acc, _, _ = fit_score(
            data.data[:n], data.truth[:n], test.data, test.truth, data.labels, enc, view
        )
        report["trec"][name] = acc
        print("trec", name, acc, flush=True)
    report["cpu"] = costs(data, n, data.labels, configs, args.repeats)
    print("cpu", json.dumps({k: {a: b for a, b in v.items() if "runs" not in a} for k, v in report["cpu"].items()}), flush=True)  # fmt: skip
    report["sms"] = spam_scores(sms(), n, configs)
    report["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
