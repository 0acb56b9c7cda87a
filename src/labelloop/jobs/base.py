"""The interface the API and the loop use to run work in the background."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labelloop.loop.spec import TaskSpec


@dataclass
class DataPrediction:
    """The answer for one data link: its value (labels, or spans) with the kind's stored scores,
    or the reason it could not be read. ``uncertainty`` is the priority a stored prediction of it
    would rank by (the task's query strategy's), so that the answer can be stored later without
    scoring the data again (Label Studio's write-behind)."""

    labels: list[Any] | None = None
    scores: list[float] | None = None
    score: float | None = None
    error: str | None = None
    uncertainty: float | None = None


@dataclass
class ItemPredictions:
    """Prediction rows of stored items from one version, and the items that could not be read."""

    version: int
    rows: list[dict[str, object]]
    failed: dict[int, str]


class JobBackend(ABC):
    """Runs stored jobs by id, and answers synchronous predictions.

    ``enqueue`` is called only after the transaction that created the jobs has committed, so a
    worker never looks for a job that is not there yet.
    """

    name: str

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start workers or connections."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop them; jobs not finished stay queued in the store and resume on the next start."""

    @abstractmethod
    def enqueue(self, job_ids: Sequence[int]) -> None:
        """Run these jobs in the background."""

    @abstractmethod
    def predict_data(
        self, spec: TaskSpec, version: int, data: Sequence[str]
    ) -> list[DataPrediction]:
        """Scores of data links (or texts) that are not stored items, from exactly ``version``."""

    @abstractmethod
    def predict_items(
        self, spec: TaskSpec, version: int, item_ids: Sequence[int]
    ) -> ItemPredictions:
        """Scores of stored items from exactly ``version``."""

    def status(self) -> dict[str, Any]:
        """Workers and queue depths, for operators."""
        return {"backend": self.name}
