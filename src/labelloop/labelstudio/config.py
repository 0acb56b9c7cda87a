"""Reading a Label Studio labelling config into what a labelloop task needs.

Supported: one control of a task kind's (:data:`labelloop.kinds.registry.LABELSTUDIO`: a
``<Choices>`` on one ``<Image>`` or ``<Text>``, where ``choice="multiple"`` makes it multi-label).
Anything else is refused with :class:`~labelloop.errors.NotSupported`, saying what was found,
instead of being half-served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from labelloop.errors import InvalidInput, NotSupported
from labelloop.kinds import TaskKind, kind_for
from labelloop.kinds.registry import LABELSTUDIO

#: The control tags labelloop serves, and the object tags each may label.
CONTROLS: dict[str, list[str]] = {}
for _control, _object in LABELSTUDIO:
    CONTROLS.setdefault(_control, []).append(_object)
SUPPORTED = " or ".join(
    f"one <{c}> on " + " or ".join(f"an <{o}>" if o[0] in "AEIOU" else f"a <{o}>" for o in objs)
    for c, objs in CONTROLS.items()
)


@dataclass(frozen=True)
class LabelConfig:
    from_name: str
    to_name: str
    #: ``Image`` or ``Text``.
    object_type: str
    #: The key of Label Studio's task data that holds the image link or the text.
    value_key: str
    labels: tuple[str, ...]
    multi_label: bool
    #: The control tag (``Choices``); configs stored before it was recorded are ``Choices``.
    control: str = "Choices"

    @property
    def category(self) -> str:
        return LABELSTUDIO[(self.control, self.object_type)]

    @property
    def extra(self) -> str:
        return "multi-label" if self.multi_label else "multi-class"

    @property
    def kind(self) -> TaskKind:
        """The task kind that reads and writes this config's results."""
        return kind_for(self.category, self.extra)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["labels"] = list(self.labels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelConfig:
        return cls(**{**data, "labels": tuple(data["labels"])})


def _parse(xml: str) -> Element:
    if not xml or not xml.strip():
        raise InvalidInput("the labelling config is empty")
    try:
        root: Element = fromstring(xml)
    except (ParseError, DefusedXmlException) as exc:
        raise InvalidInput(f"the labelling config is not valid XML: {exc}") from None
    return root


def parse_label_config(xml: str) -> LabelConfig:
    """The task a labelling config describes, or a clear refusal."""
    root = _parse(xml)
    controls = [el for el in root.iter() if el.get("toName") is not None]
    served = [el for el in controls if el.tag in CONTROLS]
    others = sorted({el.tag for el in controls if el.tag not in CONTROLS})
    if len(served) != 1 or others:
        found = ", ".join(f"<{t}>" for t in sorted({el.tag for el in controls})) or "no control tag"
        many = f" ({len(served)} <{served[0].tag}>)" if len(served) > 1 else ""
        raise NotSupported(
            f"this labelling config is not supported yet: labelloop serves {SUPPORTED}; "
            f"it has {found}{many}"
        )
    ctrl = served[0]
    tag = ctrl.tag
    from_name = ctrl.get("name") or ""
    to_name = ctrl.get("toName") or ""
    if not from_name:
        raise InvalidInput(f"the <{tag}> tag has no name")
    if "," in to_name:
        raise NotSupported(
            f"this labelling config is not supported yet: <{tag}> on several objects"
        )
    objects = {el.get("name"): el for el in root.iter() if el.get("name") and el is not ctrl}
    target = objects.get(to_name)
    if target is None:
        raise InvalidInput(f"<{tag} toName={to_name!r}> names no object in the config")
    if target.tag not in CONTROLS[tag]:
        raise NotSupported(
            f"this labelling config is not supported yet: labelloop serves {SUPPORTED}; "
            f"<{tag}> labels an <{target.tag}>"
        )
    value = target.get("value") or ""
    if not value.startswith("$") or len(value) < 2:
        raise NotSupported(
            f"this labelling config is not supported yet: <{target.tag} value={value!r}> does not "
            "read a task data field ($field)"
        )
    if target.tag == "Text" and (target.get("valueType") or "").lower() == "url":
        raise NotSupported(
            "this labelling config is not supported yet: <Text valueType='url'> (texts must be inline)"
        )
    if ctrl.get("value"):
        raise NotSupported(
            f"this labelling config is not supported yet: {tag.lower()} taken from task data "
            f"(<{tag} value='$...'>)"
        )
    child = tag[:-1]  # <Choices> holds <Choice>s, <Labels> holds <Label>s
    labels = [(c.get("alias") or c.get("value") or "").strip() for c in ctrl.iter(child)]
    if any(not label for label in labels):
        raise InvalidInput(f"a <{child}> has no value")
    if len(set(labels)) != len(labels):
        raise InvalidInput(f"a <{child}> value repeats")
    # Only <Choices> can be multi-label; one <Label> is enough for spans (one entity type).
    multi = tag == "Choices" and (ctrl.get("choice") or "single").lower() == "multiple"
    least = 2 if tag == "Choices" and not multi else 1
    if len(labels) < least:
        raise InvalidInput(f"<{tag} name={from_name!r}> needs at least {least} <{child}> values")
    return LabelConfig(
        from_name=from_name,
        to_name=to_name,
        object_type=target.tag,
        value_key=value[1:],
        labels=tuple(labels),
        multi_label=multi,
        control=tag,
    )
