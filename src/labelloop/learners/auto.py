"""``auto``: the image learner chosen per task by measurement, the default for image tasks.

It is not a model family of its own: it lists the candidates a task could use (pixels always;
the backbone's learners when a backbone is configured; the fine-tuned backbone once the task has
``finetune_min_labels`` labels) and the training job keeps the candidate with the best
cross-validated accuracy on the task's own labels, near-ties going to the higher macro F1 and
then the lower Brier score (:func:`labelloop.learners.choice.choose`), re-deciding at every
training as labels grow (fine-tuning, which is costly, competes again only once the labels have
doubled: see ``loop.training._candidates``). The version it writes is the
chosen learner itself, with its own name and featurizers. No candidate is picked by data set name
or image size.

The backbone's learners compete on the labelled items' embeddings first; the pool is embedded only
once one of them wins (:meth:`AutoImage.pool_featurizers`), so a task where pixels win (digits)
pays the backbone for its labelled items only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from labelloop.errors import InvalidInput
from labelloop.learners import backbones
from labelloop.learners.base import Features, Featurizer, Learner
from labelloop.learners.choice import Choice, choose
from labelloop.learners.embedding import BackboneParam, EmbeddingLogReg, EmbeddingSpread
from labelloop.learners.finetune import FineTune
from labelloop.learners.image import PoolSVM

#: The candidates, in order of preference when their scores are equal (the cheaper first).
CANDIDATES: dict[str, type[Learner]] = {
    c.name: c for c in (PoolSVM, EmbeddingLogReg, EmbeddingSpread, FineTune)
}
EMBEDDING = frozenset({EmbeddingLogReg.name, EmbeddingSpread.name, FineTune.name})


class AutoImage(Learner):
    """Chooses among ``candidates`` (default: all that apply) by cross-validated accuracy
    (near-ties: macro F1, then Brier score).

    ``backbone`` is passed to the backbone learners (default: the server's);
    ``finetune_min_labels``: labels before fine-tuning is a candidate; ``finetune_budget_s``: the
    time one fine-tuning fit may take; ``cv_folds``: folds of the choice inside :meth:`fit`
    (the training job uses the task's ``cv_folds``).
    """

    name = "auto"

    def __init__(
        self,
        labels: Sequence[str],
        multi_label: bool = False,
        *,
        candidates: list[str] | None = None,
        backbone: BackboneParam = None,
        finetune_min_labels: int = 200,
        finetune_budget_s: float = 60.0,
        cv_folds: int = 5,
    ) -> None:
        super().__init__(labels, multi_label)
        self.candidates = candidates
        self.backbone = backbone
        self.finetune_min_labels = finetune_min_labels
        self.finetune_budget_s = finetune_budget_s
        self.cv_folds = cv_folds

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        unknown = [n for n in params.get("candidates") or [] if n not in CANDIDATES]
        if unknown:
            raise InvalidInput(
                f"unknown candidate learner(s) {', '.join(unknown)}; "
                f"choose among {', '.join(CANDIDATES)}"
            )

    def candidate_learners(self, n_labels: int | None = None) -> list[Learner]:
        """The candidates for a task with ``n_labels`` labels (None: those that apply always)."""
        names = list(self.candidates) if self.candidates else list(CANDIDATES)
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            raise InvalidInput(
                f"unknown candidate learner(s) {', '.join(unknown)}; "
                f"choose among {', '.join(CANDIDATES)}"
            )
        has_backbone = self.backbone is not None or backbones.default_spec() is not None
        out: list[Learner] = []
        for n in names:
            if n in EMBEDDING and not has_backbone:
                continue
            if n == FineTune.name:
                spec = (
                    backbones.default_spec()
                    if self.backbone is None
                    else backbones.parse(self.backbone)
                )
                if (
                    self.multi_label
                    or spec is None
                    or spec.kind != "efficientnet-lite0"
                    or n_labels is None
                    or n_labels < self.finetune_min_labels
                ):
                    continue
                out.append(
                    FineTune(self.labels, budget_s=self.finetune_budget_s, backbone=self.backbone)
                )
                continue
            cls = CANDIDATES[n]
            params: dict[str, Any] = {}
            if "backbone" in cls.param_names():
                params["backbone"] = self.backbone
            out.append(cls(self.labels, multi_label=self.multi_label, **params))
        if not out:
            raise InvalidInput("no candidate learner applies to this task")
        return out

    def make_featurizers(self) -> list[Featurizer]:
        """Every view the always-applicable candidates read (what :meth:`fit` needs)."""
        return self._views_of(self.candidate_learners())

    def pool_featurizers(self, current: str | None) -> list[Featurizer]:
        """The views every item of a task's pool is featurized with, ``current`` being the
        learner of the task's newest version: those of the candidates that read no backbone
        (pixels: cheap), and the backbone's embeddings only once a backbone learner is current.
        Until then the backbone's learners compete on the labelled items alone (the training
        job embeds those), so a task where pixels win never embeds its whole pool."""
        embedded = current in EMBEDDING
        return self._views_of(
            [c for c in self.candidate_learners() if embedded or c.name not in EMBEDDING]
        )

    @staticmethod
    def _views_of(learners: list[Learner]) -> list[Featurizer]:
        seen: dict[str, Featurizer] = {}
        for cand in learners:
            for fz in cand.featurizers():
                seen.setdefault(fz.version, fz)
        return list(seen.values())

    def choose(
        self, X: Features, Y: np.ndarray, pool: Features | None, k: int, seed: int
    ) -> Choice:
        return choose(self.candidate_learners(len(Y)), X, Y, pool, k, seed)

    def fit(
        self, X: Features, Y: np.ndarray, pool: Features | None = None, init: Learner | None = None
    ) -> Self:
        choice = self.choose(X, Y, pool, int(self.cv_folds), seed=0)
        views = choice.learner.views()
        self.chosen_ = choice.learner.fit(
            X.only(views), Y, pool=None if pool is None else pool.only(views)
        )
        self.reason_ = choice.reason
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        return self.chosen_.predict_proba(X.only(self.chosen_.views()))

    def _state(self) -> Any:
        return {"reason": self.reason_}

    def _restore(self, state: Any) -> None:
        self.reason_ = state["reason"]

    def save(self, folder: Path) -> None:
        super().save(folder)
        self.chosen_.save(folder / "chosen")

    @classmethod
    def load(cls, folder: Path) -> Self:
        learner = super().load(folder)
        name = json.loads((folder / "chosen" / "learner.json").read_text())["learner"]
        learner.chosen_ = CANDIDATES[name].load(folder / "chosen")
        return learner
