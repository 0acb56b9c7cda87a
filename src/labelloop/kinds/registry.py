"""The one explicit list of task kinds: category (and extra) -> the kind that serves it.

Adding a kind of task is a module in :mod:`labelloop.kinds` and its entries here (plus its
learner in :mod:`labelloop.learners.registry` and its widget on the labelling page).
"""

from __future__ import annotations

from labelloop.errors import InvalidInput
from labelloop.kinds.base import TaskKind
from labelloop.kinds.classification import Classification
from labelloop.kinds.spans import TextSpans

#: category -> (what its items are, the kind's class, the extras it takes; the first is the default)
CATEGORY_KINDS: dict[str, tuple[str, type[TaskKind], tuple[str, ...]]] = {
    "image-classification": ("image", Classification, ("multi-class", "multi-label")),
    "text-classification": ("text", Classification, ("multi-class", "multi-label")),
    # One label per span: "multi-class" is the only extra (the default, so it need not be given).
    "text-spans": ("text", TextSpans, ("multi-class",)),
}
CATEGORIES = tuple(CATEGORY_KINDS)
EXTRAS = tuple(dict.fromkeys(e for _, _, extras in CATEGORY_KINDS.values() for e in extras))

#: (Label Studio control tag, object tag) -> category, for labelling configs.
LABELSTUDIO: dict[tuple[str, str], str] = {
    ("Choices", "Image"): "image-classification",
    ("Choices", "Text"): "text-classification",
    ("Labels", "Text"): "text-spans",
}


def default_extra(category: str) -> str:
    entry = CATEGORY_KINDS.get(category)
    return entry[2][0] if entry is not None else "multi-class"


def kind_for(category: str, extra: str | None = None) -> TaskKind:
    """The kind of a task of ``category`` and ``extra`` (default: the category's first)."""
    entry = CATEGORY_KINDS.get(category)
    if entry is None:
        raise InvalidInput(f"unknown category {category!r}; categories: {', '.join(CATEGORIES)}")
    media, cls, extras = entry
    extra = extras[0] if extra is None else extra
    if extra not in extras:
        raise InvalidInput(
            f"category {category!r} takes extra {' or '.join(repr(e) for e in extras)}, "
            f"not {extra!r}"
        )
    return cls(category, extra, media)


def is_kind(category: str, extra: str) -> bool:
    """Whether a kind serves tasks of this category and extra."""
    entry = CATEGORY_KINDS.get(category)
    return entry is not None and extra in entry[2]


def media_of(category: str) -> str:
    """What a category's items are: ``image`` (data links) or ``text``."""
    entry = CATEGORY_KINDS.get(category)
    return entry[0] if entry is not None else "image"
