"""A simulated annotator that labels through the HTTP API, as a person would.

It sees the pre-label, gives the true label, and after a label that starts a training job waits
for the job to finish, like a person who needs a few seconds per item. The demo, ``labelloop
simulate`` and the benchmarks all use it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


def run_stream(
    client: Client,
    task_id: int,
    items: Sequence[tuple[int, list[str]]],
    on_step: Callable[[Step], None] | None = None,
    annotator: str = "simulated",
) -> StreamResult:
    """Label ``items`` (item id, true labels) in the given order; returns what it measured."""
    result = StreamResult()
    started = time.perf_counter()
    served: int | None = None
    heldout: float | None = None
    for n, (item_id, truth) in enumerate(items, start=1):
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
            result.curve.append(
                {
                    "labels": n,
                    "served_version": served,
                    "heldout_accuracy": heldout,
                    "edit_rate_so_far": result.edit_rate,
                }
            )
        result.n = n
        if on_step is not None:
            on_step(Step(n, edited, served, heldout))
    result.wall_seconds = time.perf_counter() - started
    return result
