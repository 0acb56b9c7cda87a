from __future__ import annotations

import pytest
from pydantic import ValidationError

from labelloop.loop.policy import Policy


def test_first_training_needs_min_labels_and_two_classes() -> None:
    p = Policy(min_labels=10)
    assert not p.training_due(9, 3, None)
    assert not p.training_due(50, 1, None)
    assert p.training_due(10, 2, None)


def test_retrain_on_growth() -> None:
    p = Policy(min_labels=10, growth=0.1)
    assert not p.training_due(10, 2, 10)
    assert p.training_due(11, 2, 10)
    assert not p.training_due(109, 2, 100)
    assert p.training_due(110, 2, 100)


def test_unknown_policy_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        Policy.model_validate({"min_lables": 3})
