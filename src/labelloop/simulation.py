"""A simulated annotator that labels through the HTTP API, as a person would.

It sees the pre-label, gives the true label, and after a label that starts a training job waits
for the job to finish, like a person who needs a few seconds per item. The demo, ``labelloop
simulate`` and the benchmarks all use it.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelloop.client import Client


@dataclass
class Step:
    n: int
    edited: bool
    served_version: int | None
    heldout_accuracy: float | None


@dataclass
class StreamResult:
    n: int = 0
    edits: list[bool] = field(default_factory=list)
    versions_trained: int = 0
    versions_promoted: int = 0
    first_model_labels: int | None = None
    first_model_seconds: float | None = None
    update_latencies: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    curve: list[dict[str, Any]] = field(default_factory=list)

    @property
    def edit_rate(self) -> float:
        return sum(self.edits) / len(self.edits) if self.edits else 0.0

    @property
    def edit_rate_second_half(self) -> float:
        half = self.edits[len(self.edits) // 2 :]
        return sum(half) / len(half) if half else 0.0

    @property
    def median_update_latency(self) -> float | None:
        return statistics.median(self.update_latencies) if self.update_latencies else None

    def summary(self) -> dict[str, Any]:
        return {
            "items": self.n,
            "edit_rate": self.edit_rate,
            "edit_rate_second_half": self.edit_rate_second_half,
            "versions_trained": self.versions_trained,
            "versions_promoted": self.versions_promoted,
            "first_model_labels": self.first_model_labels,
            "first_model_seconds": self.first_model_seconds,
            "median_update_latency_s": self.median_update_latency,
            "wall_seconds": self.wall_seconds,
        }


class Annotator:
    """Gives the true label, except that a share of labels (``flip_rate``) is flipped at random."""

    def __init__(self, labels: Sequence[str], flip_rate: float = 0.0, seed: int = 0) -> None:
        self.labels = list(labels)
        self.flip_rate = flip_rate
        self.rng = random.Random(seed)
        self.flipped: set[int] = set()

    def label(self, item_id: int, truth: list[str]) -> list[str]:
        if self.flip_rate and self.rng.random() < self.flip_rate:
            others = [label for label in self.labels if [label] != truth]
            self.flipped.add(item_id)
            return [self.rng.choice(others)]
        return truth


def run_stream(
    client: Client,
    task_id: int,
    items: Sequence[tuple[int, list[str]]],
    on_step: Callable[[Step], None] | None = None,
    annotator: str = "simulated",
    noise: Annotator | None = None,
    on_train: Callable[[int], dict[str, Any]] | None = None,
    stop: Callable[[dict[str, Any]], bool] | None = None,
) -> StreamResult:
    """Label ``items`` (item id, true labels) in the given order; returns what it measured."""
    result = StreamResult()
    started = time.perf_counter()
    served: int | None = None
    heldout: float | None = None
    for n, (item_id, true_labels) in enumerate(items, start=1):
        truth = noise.label(item_id, true_labels) if noise else true_labels
        pred = client.prediction(task_id, item_id)
        shown = pred.get("model_version")
        annotation: dict[str, Any] = {"item_id": item_id, "labels": truth, "annotator": annotator}
        if shown is None:
            annotation["shown_none"] = True
        else:
            annotation["shown_version"] = shown
        answer = client.annotate(task_id, [annotation])
        edited = bool(answer["annotations"][0]["edited"])
        result.edits.append(edited)
        if answer["training_triggered"]:
            t0 = time.perf_counter()
            task = client.wait_for_training(task_id)
            latency = time.perf_counter() - t0
            result.versions_trained += 1
            if task["served_version"] != served:
                result.versions_promoted += 1
                if served is None:
                    result.first_model_labels = n
                    result.first_model_seconds = latency
                else:
                    result.update_latencies.append(latency)
                served = task["served_version"]
                versions = client.models(task_id)
                current = [v for v in versions if v["version"] == served]
                heldout = current[0]["metrics"].get("cv_accuracy") if current else None
            point = {
                "labels": n,
                "served_version": served,
                "heldout_accuracy": heldout,
                "edit_rate_so_far": result.edit_rate,
            }
            point.update(on_train(n) if on_train else {})
            result.curve.append(point)
            if stop is not None and stop(point):
                result.n = n
                break
        result.n = n
        if on_step is not None:
            on_step(Step(n, edited, served, heldout))
    result.wall_seconds = time.perf_counter() - started
    return result


@dataclass
class ActiveResult:
    human_labels: int = 0
    items: int = 0
    model_labelled: int = 0
    final_accuracy: float = 0.0
    model_label_accuracy: float | None = None
    edits: list[bool] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def human_share(self) -> float:
        return self.human_labels / self.items if self.items else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "human_labels": self.human_labels,
            "human_share": self.human_share,
            "model_labelled": self.model_labelled,
            "final_accuracy": self.final_accuracy,
            "model_label_accuracy": self.model_label_accuracy,
            "edit_rate": sum(self.edits) / len(self.edits) if self.edits else None,
            "wall_seconds": self.wall_seconds,
        }


def run_active(
    client: Client,
    task_id: int,
    truth: dict[int, list[str]],
    on_step: Callable[[Step], None] | None = None,
    annotator: str = "simulated",
    noise: Annotator | None = None,
    max_labels: int | None = None,
    on_train: Callable[[int], dict[str, Any]] | None = None,
    stop: Callable[[dict[str, Any]], bool] | None = None,
) -> ActiveResult:
    """Label whatever ``/next`` asks for until every item is labelled by a person or the model."""
    result = ActiveResult(items=len(truth))
    started = time.perf_counter()
    served: int | None = None
    heldout: float | None = None
    while max_labels is None or result.human_labels < max_labels:
        batch = client.next_items(task_id, limit=1)["items"]
        if not batch:
            break
        item = batch[0]
        shown = item["prediction"].get("model_version")
        labels = noise.label(item["id"], truth[item["id"]]) if noise else truth[item["id"]]
        annotation: dict[str, Any] = {
            "item_id": item["id"],
            "labels": labels,
            "annotator": annotator,
        }
        if shown is None:
            annotation["shown_none"] = True
        else:
            annotation["shown_version"] = shown
        answer = client.annotate(task_id, [annotation])
        result.human_labels += 1
        edited = bool(answer["annotations"][0]["edited"])
        result.edits.append(edited)
        if answer["training_triggered"]:
            task = client.wait_for_training(task_id)
            served = task["served_version"]
            current = [v for v in client.models(task_id) if v["version"] == served]
            heldout = current[0]["metrics"].get("cv_accuracy") if current else None
            point = {
                "labels": result.human_labels,
                "served_version": served,
                "heldout_accuracy": heldout,
                "model_labelled": task["counts"]["model_labelled"],
                "edit_rate_so_far": sum(result.edits) / len(result.edits),
            }
            point.update(on_train(result.human_labels) if on_train else {})
            result.curve.append(point)
            if stop is not None and stop(point):
                break
        if on_step is not None:
            on_step(Step(result.human_labels, edited, served, heldout))
    right = model_right = model_n = 0
    for line in client.export(task_id):
        row = json.loads(line)
        ok = row["labels"] is not None and sorted(row["labels"]) == sorted(
            truth.get(row["item_id"], [])
        )
        right += ok
        if row["source"] == "model":
            model_n += 1
            model_right += ok
    result.model_labelled = model_n
    result.final_accuracy = right / len(truth) if truth else 0.0
    result.model_label_accuracy = model_right / model_n if model_n else None
    result.wall_seconds = time.perf_counter() - started
    return result


def plot_curve(curve: list[dict[str, Any]], path: Path, title: str) -> None:
    """Held-out accuracy and edit rate against human labels, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    xs = [float(p["labels"]) for p in curve]

    def series(key: str) -> list[float]:
        return [float("nan") if p.get(key) is None else float(p[key]) for p in curve]

    ax.plot(xs, series("heldout_accuracy"), label="held-out accuracy (served model)")
    ax.plot(xs, series("edit_rate_so_far"), label="edit rate so far")
    ax.set_xlabel("human labels")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
