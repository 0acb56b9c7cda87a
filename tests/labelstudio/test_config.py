"""Reading Label Studio labelling configs: what is served, and clear refusals for the rest."""

from __future__ import annotations

import pytest

from labelloop.errors import InvalidInput, NotSupported
from labelloop.labelstudio.config import parse_label_config

IMAGE = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image" showInLine="true">
    <Choice value="cat"/><Choice value="dog"/><Choice value="Other animal" alias="other"/>
  </Choices>
</View>"""

TEXT_MULTI = """<View>
  <Header value="Which topics?"/>
  <Text name="text" value="$review"/>
  <Choices name="topics" toName="text" choice="multiple">
    <Choice value="price"/><Choice value="service"/><Choice value="food"/>
  </Choices>
</View>"""


def test_image_choices_is_multi_class() -> None:
    cfg = parse_label_config(IMAGE)
    assert (cfg.from_name, cfg.to_name, cfg.object_type, cfg.value_key) == (
        "choice",
        "image",
        "Image",
        "image",
    )
    assert cfg.labels == ("cat", "dog", "other")  # the alias is what Label Studio stores
    assert (cfg.category, cfg.extra) == ("image-classification", "multi-class")


def test_text_choices_multiple_is_multi_label() -> None:
    cfg = parse_label_config(TEXT_MULTI)
    assert cfg.object_type == "Text" and cfg.value_key == "review"
    assert (cfg.category, cfg.extra) == ("text-classification", "multi-label")
    assert cfg.labels == ("price", "service", "food")


def test_labels_on_text_is_a_text_spans_task() -> None:
    cfg = parse_label_config(
        '<View><Labels name="label" toName="text"><Label value="PER"/><Label value="ORG"/>'
        '</Labels><Text name="text" value="$text"/></View>'
    )
    assert (cfg.from_name, cfg.to_name, cfg.control) == ("label", "text", "Labels")
    assert (cfg.category, cfg.extra, cfg.labels) == ("text-spans", "multi-class", ("PER", "ORG"))
    assert cfg.kind.value_field == "spans"
    # A config stored before the control was recorded reads back as <Choices>.
    old = {k: v for k, v in parse_label_config(IMAGE).as_dict().items() if k != "control"}
    assert type(cfg).from_dict(old).category == "image-classification"


@pytest.mark.parametrize(
    ("xml", "found"),
    [
        (
            '<View><Image name="i" value="$image"/><RectangleLabels name="b" toName="i">'
            '<Label value="car"/></RectangleLabels></View>',
            "<RectangleLabels>",
        ),
        (
            '<View><Image name="i" value="$image"/><Labels name="l" toName="i">'
            '<Label value="PER"/></Labels></View>',
            "<Labels> labels an <Image>",
        ),
        (
            '<View><Audio name="a" value="$audio"/><Choices name="c" toName="a">'
            '<Choice value="x"/><Choice value="y"/></Choices></View>',
            "<Audio>",
        ),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="i">'
            '<Choice value="x"/><Choice value="y"/></Choices><Choices name="d" toName="i">'
            '<Choice value="x"/><Choice value="y"/></Choices></View>',
            "2 <Choices>",
        ),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="i">'
            '<Choice value="x"/><Choice value="y"/></Choices>'
            '<TextArea name="note" toName="i"/></View>',
            "<TextArea>",
        ),
        (
            '<View><Text name="t" value="$url" valueType="url"/><Choices name="c" toName="t">'
            '<Choice value="x"/><Choice value="y"/></Choices></View>',
            "valueType",
        ),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="i" value="$opts"/>'
            "</View>",
            "task data",
        ),
    ],
)
def test_other_configs_are_not_supported_yet(xml: str, found: str) -> None:
    with pytest.raises(NotSupported, match="not supported yet") as info:
        parse_label_config(xml)
    assert found in info.value.message
    assert info.value.status_code == 422


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        ("", "empty"),
        ("<View><Image", "not valid XML"),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="x">'
            '<Choice value="a"/><Choice value="b"/></Choices></View>',
            "names no object",
        ),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="i">'
            '<Choice value="a"/></Choices></View>',
            "at least 2",
        ),
        (
            '<!DOCTYPE x [<!ENTITY a "aaaa">]><View><Image name="i" value="$image"/></View>',
            "not valid XML",
        ),
    ],
)
def test_broken_configs_are_refused(xml: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_label_config(xml)
