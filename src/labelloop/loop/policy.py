"""A task's policy: when to train, how to evaluate, what to show next, what to auto-label."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AutoLabelPolicy(BaseModel):
    """Auto-labelling; the defaults are the measured best on digits (docs/BENCHMARKS.md)."""

    model_config = ConfigDict(extra="forbid")

    target_accuracy: float = Field(default=0.98, gt=0.5, lt=1.0)
    #: What the target is about: the model's labels, or the whole data set (people's labels
    #: counted as right, so the model's labels may be a little less accurate).
    scope: Literal["model-labels", "dataset"] = "model-labels"
    #: Human labels needed before any item is auto-labelled.
    min_labels: int = Field(default=10, ge=10)
    #: Confidence of the lower bound on accuracy (one-sided), at each promotion.
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    #: Held-out evidence: "audits" (labels of items ``/next`` picked at random, unbiased whatever
    #: else people label) or "all" (every human label: valid only when people label items in an
    #: order that does not depend on the model, such as a random stream).
    evidence: Literal["audits", "all"] = "audits"
    #: Share of the items ``/next`` hands out that are random audits rather than uncertain items.
    #: Evidence, not the model, is what a claim waits for: four audits per uncertain item (with
    #: the scan that starts low, ``autolabel.sequence_start``) cost a mean of 17.5% of digits
    #: over seeds 0-9 where two, with the old scan, cost 22.9% (docs/BENCHMARKS.md).
    audit_share: float = Field(default=0.8, ge=0.0, le=1.0)
    #: Once a threshold is certified and this few items are left uncovered, hand them out directly.
    tail: int = Field(default=100, ge=0)
    #: Once enough audits are labelled to show the target, train again after this many more
    #: audits (without waiting for ``growth``), so that a threshold is certified as soon as the
    #: evidence allows rather than up to 10% of the labels later.
    evidence_step: int | None = Field(default=8, ge=1)
    #: Score the audits by models trained on every label but a fold of the audits (this many
    #: folds; as many more fits per training) instead of the task's cross-validation, which
    #: also leaves out the uncertain items that teach the model the audits' confusable regions.
    #: Off by default: over ten paired runs on digits it saved 0.6 points of share on average,
    #: fewer labels in 5 of 10, within the spread between runs, and with a fine-tuned learner
    #: each fold is a fine-tuning (docs/BENCHMARKS.md).
    audit_folds: int | None = Field(default=None, ge=2, le=20)

    def evidence_due(self, audits: int, audits_last: int | None, need: int) -> bool:
        """Whether ``audits`` labelled audits call for a training (``need``: the fewest that
        could show the target; ``audits_last``: audits at the last training)."""
        if self.evidence_step is None or audits < need:
            return False
        return (
            audits_last is None or audits_last < need or audits - audits_last >= self.evidence_step
        )


class Policy(BaseModel):
    """Defaults follow the measurements in docs/BENCHMARKS.md."""

    model_config = ConfigDict(extra="forbid")

    #: First training once this many items are labelled (with at least two classes).
    min_labels: int = Field(default=10, ge=2)
    #: Retrain when the labelled set has grown by this fraction since the last training.
    growth: float = Field(default=0.10, gt=0.0, le=10.0)
    #: Folds of the cross-validation that scores every candidate out of sample.
    cv_folds: int = Field(default=5, ge=2, le=20)
    #: One-sided confidence with which the served model must be shown better to keep a candidate out.
    promotion_confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    #: A non-default learner from the registry, and parameters for it.
    learner: str | None = None
    learner_params: dict[str, Any] = Field(default_factory=dict)
    #: How ``/next`` ranks unlabelled items once a model serves.
    selection: Literal["margin", "entropy", "least-confidence", "random"] = "margin"
    #: Weight uncertainty by how central an item is in the pool (its degree in the k-NN graph of
    #: its features), so that uncertain outliers do not crowd out uncertain typical items. By
    #: default on, except with auto-labelling: certifying a threshold needs the model right on
    #: random audits, outliers included, and plain margin sampling teaches it those (measured).
    density_weighting: bool | None = None

    @property
    def weights_by_density(self) -> bool:
        if self.density_weighting is None:
            return self.auto_label is None
        return self.density_weighting

    auto_label: AutoLabelPolicy | None = None
    #: Fixes the task's random choices (the order before the first model, the audits), so a
    #: simulation can be repeated exactly; by default every task draws its own.
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    #: How many different people label each item (agreement between annotators needs 2 or
    #: more): ``/next`` hands an item out until that many people labelled it.
    overlap: int = Field(default=1, ge=1, le=20)
    #: The labelling page's keys, label -> one character (by default the label itself when every
    #: label is one character, else positions 1-9, 0).
    hotkeys: dict[str, str] = Field(default_factory=dict)

    @field_validator("hotkeys")
    @classmethod
    def _one_key_each(cls, hotkeys: dict[str, str]) -> dict[str, str]:
        for label, key in hotkeys.items():
            if len(key) != 1 or key.isspace():
                raise ValueError(f"the hotkey of {label!r} must be one character, not {key!r}")
        if len(set(hotkeys.values())) != len(hotkeys):
            raise ValueError("two labels share a hotkey")
        return hotkeys

    def training_due(
        self, n_labels: int, n_classes: int, last_trained: int | None, min_classes: int = 2
    ) -> bool:
        """Whether the labels call for a training: enough of them, using ``min_classes`` labels
        between them (the task's kind says how many), and grown by ``growth`` since the last."""
        if n_labels < self.min_labels or n_classes < min_classes:
            return False
        if last_trained is None:
            return True
        threshold = math.ceil(last_trained * (1.0 + self.growth) - 1e-9)
        return n_labels >= max(last_trained + 1, threshold)
