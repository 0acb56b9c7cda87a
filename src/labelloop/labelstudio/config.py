"""Reading a Label Studio labelling config into what a labelloop task needs.

Supported: one ``<Choices>`` on one ``<Image>`` or ``<Text>`` (``choice="multiple"`` makes it
multi-label). Anything else is refused with :class:`~labelloop.errors.NotSupported`, saying what
was found, instead of being half-served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from labelloop.errors import InvalidInput, NotSupported

OBJECTS = {"Image": "image-classification", "Text": "text-classification"}
SUPPORTED = "one <Choices> on an <Image> or a <Text>"


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

    @property
    def category(self) -> str:
        return OBJECTS[self.object_type]

    @property
    def extra(self) -> str:
        return "multi-label" if self.multi_label else "multi-class"

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
    choices = [el for el in controls if el.tag == "Choices"]
    others = sorted({el.tag for el in controls if el.tag != "Choices"})
    if len(choices) != 1 or others:
        found = ", ".join(f"<{t}>" for t in sorted({el.tag for el in controls})) or "no control tag"
        raise NotSupported(
            f"this labelling config is not supported yet: labelloop serves {SUPPORTED}; "
            f"it has {found}" + (f" ({len(choices)} <Choices>)" if len(choices) > 1 else "")
        )
    ctrl = choices[0]
    from_name = ctrl.get("name") or ""
    to_name = ctrl.get("toName") or ""
    if not from_name:
        raise InvalidInput("the <Choices> tag has no name")
    if "," in to_name:
        raise NotSupported(
            "this labelling config is not supported yet: <Choices> on several objects"
        )
    objects = {el.get("name"): el for el in root.iter() if el.get("name") and el is not ctrl}
    target = objects.get(to_name)
    if target is None:
        raise InvalidInput(f"<Choices toName={to_name!r}> names no object in the config")
    if target.tag not in OBJECTS:
        raise NotSupported(
            f"this labelling config is not supported yet: labelloop serves {SUPPORTED}; "
            f"<Choices> labels an <{target.tag}>"
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
            "this labelling config is not supported yet: choices taken from task data "
            "(<Choices value='$...'>)"
        )
    labels = [(c.get("alias") or c.get("value") or "").strip() for c in ctrl.iter("Choice")]
    if any(not label for label in labels):
        raise InvalidInput("a <Choice> has no value")
    if len(set(labels)) != len(labels):
        raise InvalidInput("a <Choice> value repeats")
    multi = (ctrl.get("choice") or "single").lower() == "multiple"
    if len(labels) < (1 if multi else 2):
        raise InvalidInput(
            f"<Choices name={from_name!r}> needs at least {1 if multi else 2} <Choice> values"
        )
    return LabelConfig(
        from_name=from_name,
        to_name=to_name,
        object_type=target.tag,
        value_key=value[1:],
        labels=tuple(labels),
        multi_label=multi,
    )
