"""CPU per text of a text model's request path, in one process: featurize + ``predict_proba``.

What a Label Studio ``/predict`` of a text project computes for its batch (``featurize_contents``
then the model), without the server: ``tfidf-svm`` fitted on the first ``--labels`` TREC-6
questions in the default configuration (TF-IDF + static token embeddings) and the fast one
(``embeddings: false``), then 2,048 new questions in batches of 64, ``--repeats`` times A B A B,
``time.process_time`` (all threads). The first pass over the questions is left out: it fills the
per-word caches of the static pieces and the character n-grams, as a server's first requests do.
``--src`` measures another source tree (a "before").

    python -m bench.text_predict_cpu --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from bench.datasets import trec
from labelloop.learners.base import Features
from labelloop.learners.text import TfidfSVM
from labelloop.loop.features import featurize_contents, text_content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = trec(None)
    n = args.labels
    raws = [t.encode() for t in data.data[:n]]
    y = np.zeros((n, len(data.labels)))
    y[np.arange(n), [data.labels.index(t) for t in data.truth[:n]]] = 1
    models = {}
    for name, embeddings in (("default", "auto"), ("fast", False)):
        model = TfidfSVM(data.labels, embeddings=embeddings)
        model.fit(Features({f.view: f.transform(raws) for f in model.featurizers()}), y)
        models[name] = model
    new = data.data[n : n + 2048]
    batches = [[text_content(t) for t in new[i : i + 64]] for i in range(0, len(new), 64)]

    def run(model: TfidfSVM) -> float:
        t0 = time.process_time()
        for batch in batches:
            model.predict_proba(featurize_contents(model, batch))
        return 1e6 * (time.process_time() - t0) / len(new)

    first = {name: run(model) for name, model in models.items()}
    us: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            us[name].append(run(model))
    report = {
        name: {"us_per_text": statistics.median(v), "runs": v, "first_pass": first[name]}
        for name, v in us.items()
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
