"""Named entities with a model in the loop, through the HTTP API of a real server (issue 16).

Protocol (docs/BENCHMARKS.md): ``--sentences`` sentences drawn at random from a CoNLL-format NER
corpus are imported as the items of a ``text-spans`` task, and ``--test`` other sentences are kept
aside. The sentences are labelled in a random order by a simulated annotator who sees the served
model's pre-labelled spans and corrects them to the corpus's spans (keeps the right ones, changes
the label of a span whose offsets are right, removes the wrong ones, marks the missing ones), then
waits for a training its label started, as the classification benches' annotator does.

Measured: the share of sentences whose pre-labelled spans were edited (the API's ``edited``, the
whole stream and its second half); the entity F1 of the pre-labels shown against the labels
given; the time from the label that started a training to the new version serving; the served
model's entity F1 on the test sentences at the end, against the same learner trained once on all
the stream's labels (imported as JSON lines into a task of their own); and what correcting saves
over marking every span from scratch (Prodigy's ``ner.correct`` against ``ner.manual``): the
spans the annotator had to mark, as a share of the spans in the labels.

    git --git-dir=MIRROR show COMMIT:conll2003/train.txt > /tmp/conll-train.txt
    python -m bench.spans --corpus /tmp/conll-train.txt --sentences 1500 --test 500 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import datasets
from labelloop.client import Client
from labelloop.demo import free_port, running_server
from labelloop.kinds.spans import entity_scores, span_set

Spans = list[dict[str, Any]]
#: Sentences sent to ``/predict`` at a time.
PREDICT_BATCH = 100


@dataclass
class Correction:
    """What the annotator did to one sentence's pre-labelled spans to make them the labels."""

    kept: int = 0
    relabelled: int = 0
    removed: int = 0
    typed: int = 0

    @classmethod
    def of(cls, shown: Spans, truth: Spans) -> Correction:
        """A shown span that is right is kept; one whose offsets are right and label wrong is
        relabelled (a key); one that is wrong is removed (a click); a true span not shown with
        its offsets is typed (selected and labelled), as from scratch."""
        s, t = span_set(shown), span_set(truth)
        at = {(a, b) for a, b, _ in t}
        kept = s & t
        relabelled = {x for x in s - t if (x[0], x[1]) in at}
        shown_at = {(a, b) for a, b, _ in s}
        return cls(
            kept=len(kept),
            relabelled=len(relabelled),
            removed=len(s - t - relabelled),
            typed=sum(1 for a, b, _ in t if (a, b) not in shown_at),
        )


@dataclass
class StreamLog:
    """What the stream measured, sentence by sentence and per training."""

    edits: list[bool] = field(default_factory=list)
    shown_model: list[bool] = field(default_factory=list)
    shown: list[Spans] = field(default_factory=list)
    given: list[Spans] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)
    trainings: list[dict[str, Any]] = field(default_factory=list)
    first_model_labels: int | None = None
    wall_seconds: float = 0.0

    def share_edited(self, part: slice = slice(None)) -> float | None:
        edits = self.edits[part]
        return sum(edits) / len(edits) if edits else None

    def shown_f1(self, part: slice = slice(None)) -> dict[str, float] | None:
        """Entity scores of the pre-labels shown (sentences a model pre-labelled) against the
        labels given."""
        pairs = [
            (s, g)
            for s, g, m in zip(
                self.shown[part], self.given[part], self.shown_model[part], strict=True
            )
            if m
        ]
        if not pairs:
            return None
        return entity_scores([s for s, _ in pairs], [g for _, g in pairs])

    def typing(self, part: slice = slice(None)) -> dict[str, float | int | None]:
        """Spans marked by hand with the pre-labels, against marking every span from scratch."""
        done = self.corrections[part]
        scratch = sum(c.kept + c.relabelled + c.typed for c in done)
        typed = sum(c.typed for c in done)
        actions = sum(c.typed + c.relabelled + c.removed for c in done)
        return {
            "spans_in_labels": scratch,
            "spans_typed": typed,
            "relabelled": sum(c.relabelled for c in done),
            "removed": sum(c.removed for c in done),
            "typed_share": typed / scratch if scratch else None,
            "actions_share": actions / scratch if scratch else None,
        }

    def summary(self) -> dict[str, Any]:
        half = slice(len(self.edits) // 2, None)
        latencies = [t["seconds"] for t in self.trainings if t["new_version"]]
        return {
            "sentences": len(self.edits),
            "edited_share": self.share_edited(),
            "edited_share_second_half": self.share_edited(half),
            "shown_entity_scores": self.shown_f1(),
            "shown_entity_scores_second_half": self.shown_f1(half),
            "typing": self.typing(),
            "typing_second_half": self.typing(half),
            "first_model_labels": self.first_model_labels,
            "trainings": len(self.trainings),
            "versions_served": sum(1 for t in self.trainings if t["new_version"]),
            "label_to_new_version_median_s": statistics.median(latencies) if latencies else None,
            "label_to_new_version_max_s": max(latencies) if latencies else None,
            "wall_seconds": self.wall_seconds,
        }


def shown_spans(prediction: dict[str, Any]) -> tuple[int | None, Spans]:
    """The version whose pre-label was shown and its spans (without scores)."""
    version = prediction.get("model_version") if prediction.get("status") == "ok" else None
    spans = (prediction.get("spans") or []) if version is not None else []
    return version, [{"start": s["start"], "end": s["end"], "label": s["label"]} for s in spans]


def label_stream(
    client: Client, task_id: int, stream: list[tuple[int, Spans]], annotator: str = "simulated"
) -> StreamLog:
    """Label ``stream`` (item id, true spans) in order, correcting the spans shown."""
    log = StreamLog()
    started = time.perf_counter()
    served: int | None = None
    for n, (item_id, truth) in enumerate(stream, start=1):
        version, shown = shown_spans(dict(client.prediction(task_id, item_id)))
        annotation: dict[str, Any] = {"item_id": item_id, "spans": truth, "annotator": annotator}
        if version is None:
            annotation["shown_none"] = True
        else:
            annotation["shown_version"] = version
        answer = client.annotate(task_id, [annotation])
        log.edits.append(bool(answer["annotations"][0]["edited"]))
        log.shown_model.append(version is not None)
        log.shown.append(shown)
        log.given.append(truth)
        log.corrections.append(Correction.of(shown, truth))
        if answer["training_triggered"]:
            t0 = time.perf_counter()
            task = client.wait_for_training(task_id)
            now = task["served_version"]
            log.trainings.append(
                {
                    "labels": n,
                    "seconds": time.perf_counter() - t0,
                    "served_version": now,
                    "new_version": now != served,
                }
            )
            if now is not None and served is None:
                log.first_model_labels = n
            served = now
    log.wall_seconds = time.perf_counter() - started
    return log


def predicted_f1(client: Client, task_id: int, texts: list[str], truth: list[Spans]) -> Any:
    """Entity scores of the served model's spans for ``texts`` (``/predict``) against ``truth``;
    ``None`` when no model serves."""
    got: list[Spans] = []
    version = None
    for start in range(0, len(texts), PREDICT_BATCH):
        answer = client.predict(task_id, texts[start : start + PREDICT_BATCH])
        if answer["model_version"] is None:
            return None
        version = answer["model_version"]
        got.extend(shown_spans({**p, "model_version": version})[1] for p in answer["predictions"])
    return {"model_version": version, **entity_scores(got, truth)}


def served_metrics(client: Client, task_id: int) -> dict[str, Any] | None:
    """The served version's own metrics (held-out entity scores, training time)."""
    served = client.get_task(task_id)["served_version"]
    version = next((v for v in client.models(task_id) if v["version"] == served), None)
    return None if version is None else dict(version.get("metrics") or {})


def add_texts(client: Client, task_id: int, texts: list[str]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(texts), 1000):
        chunk = texts[start : start + 1000]
        added = client.add_items(
            task_id,
            [{"data": t, "external_id": f"s{start + i}"} for i, t in enumerate(chunk)],
        )
        by_ext = {it["external_id"]: it["id"] for it in added["items"]}
        ids.extend(by_ext[f"s{start + i}"] for i in range(len(chunk)))
    while client.get_task(task_id)["counts"]["pending"]:
        time.sleep(0.5)  # featurizing, as a team imports before it labels
    return ids


def reference(
    client: Client,
    ds: datasets.SpanDataset,
    stream: list[int],
    test: list[int],
    policy: dict[str, Any],
) -> dict[str, Any]:
    """The same learner trained once on all the stream's labels (imported as JSON lines, no
    training until asked), scored on the test sentences."""
    task = client.create_task(
        "reference", "text-spans", ds.labels, policy={**policy, "min_labels": 10**6}
    )
    lines = [{"id": str(i), "text": ds.texts[i], "spans": ds.spans[i]} for i in stream]
    imported = client.import_jsonl(task["id"], lines)
    while client.get_task(task["id"])["counts"]["pending"]:
        time.sleep(0.5)
    t0 = time.perf_counter()
    client.train(task["id"])
    client.wait_for_training(task["id"])
    seconds = time.perf_counter() - t0
    scores = predicted_f1(
        client, task["id"], [ds.texts[i] for i in test], [ds.spans[i] for i in test]
    )
    return {
        "labelled": imported["labelled"],
        "train_seconds": seconds,
        "test": scores,
        "version_metrics": served_metrics(client, task["id"]),
    }


def run(
    ds: datasets.SpanDataset,
    n_stream: int,
    n_test: int,
    seed: int,
    work: Path,
    policy: dict[str, Any],
    with_reference: bool = True,
) -> dict[str, Any]:
    order = np.random.RandomState(seed).permutation(len(ds.texts))
    stream_idx = [int(i) for i in order[:n_stream]]
    test_idx = [int(i) for i in order[n_stream : n_stream + n_test]]
    with (
        running_server(work / f"data-{seed}", free_port(), log=work / "server.log") as server,
        Client(server.url, timeout=3600) as client,
    ):
        task = client.create_task(f"{ds.name} seed {seed}", "text-spans", ds.labels, policy=policy)
        ids = add_texts(client, task["id"], [ds.texts[i] for i in stream_idx])
        log = label_stream(
            client, task["id"], [(ids[k], ds.spans[i]) for k, i in enumerate(stream_idx)]
        )
        test_texts, test_truth = [ds.texts[i] for i in test_idx], [ds.spans[i] for i in test_idx]
        out: dict[str, Any] = {
            "dataset": ds.name,
            "seed": seed,
            "policy": policy,
            "test_sentences": len(test_idx),
            **log.summary(),
            "served_test": predicted_f1(client, task["id"], test_texts, test_truth),
            "served_version_metrics": served_metrics(client, task["id"]),
            "trainings_log": log.trainings,
        }
        if with_reference:
            out["reference"] = reference(client, ds, stream_idx, test_idx, policy)
    out["load_average"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=None, help="a CoNLL-format NER file")
    parser.add_argument("--sentences", type=int, default=1500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", type=json.loads, default={}, help="policy JSON for the task")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ds = datasets.conll_ner(args.corpus)
    policy = {"seed": args.seed, **args.policy}
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-") as tmp:
        result = run(
            ds, args.sentences, args.test, args.seed, Path(tmp), policy, not args.no_reference
        )
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
