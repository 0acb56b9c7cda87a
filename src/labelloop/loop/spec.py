"""An immutable snapshot of a task's settings, safe to use outside a database session."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from labelloop.kinds import TaskKind, kind_for
from labelloop.learners import Learner, make_learner
from labelloop.learners.registry import has_learner
from labelloop.loop.policy import AutoLabelPolicy, Policy
from labelloop.store.models import Task


@dataclass(frozen=True)
class TaskSpec:
    id: int
    name: str
    category: str
    extra: str
    labels: tuple[str, ...]
    policy: Policy
    salt: str
    served_version: int | None

    @cached_property
    def kind(self) -> TaskKind:
        """What an annotation of this task is, and everything that depends on it."""
        return kind_for(self.category, self.extra)

    @property
    def multi_label(self) -> bool:
        return self.extra == "multi-label"

    @classmethod
    def of(cls, task: Task) -> TaskSpec:
        return cls(
            id=task.id,
            name=task.name,
            category=task.category,
            extra=task.extra,
            labels=tuple(task.labels),
            policy=Policy.model_validate(task.policy),
            salt=task.salt,
            served_version=task.served_version,
        )

    @property
    def auto_label(self) -> AutoLabelPolicy | None:
        """The policy's auto-labelling, unless the task's kind refuses it (text spans; a policy
        that asks for it is refused when it is set, this covers tasks stored before)."""
        return None if self.kind.auto_label_refusal is not None else self.policy.auto_label

    @property
    def has_learner(self) -> bool:
        """Whether a learner serves this task's kind (else it is labelled without a model)."""
        return has_learner(self.category, self.extra)

    def new_learner(self) -> Learner:
        return make_learner(
            self.category,
            self.extra,
            self.labels,
            name=self.policy.learner,
            **self.policy.learner_params,
        )
