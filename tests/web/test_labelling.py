"""The labelling page in headless Chromium: no silent mislabels, back and undo, who labels.

Text tasks keep these fast: their items show at once (no image to fetch), which is also the
hardest case for a double-click, since the next item's choices are already under the pointer.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from labelloop.client import Client, InvalidRequestError
from tests.support import wait_until
from tests.web.conftest import ARTIFACTS, PAGE_ONLY, on_screen, wait_for_next

pytestmark = [pytest.mark.browser, PAGE_ONLY]

TOPICS = {
    "sport": "football goal match team referee league striker score stadium",
    "food": "pasta recipe oven garlic tomato flavour dinner bread butter",
    "music": "guitar concert melody song drummer chorus album piano band",
}


def text_task(
    ll: Client, name: str, labels: list[str], texts: list[str], **policy: Any
) -> tuple[int, list[int]]:
    task = ll.create_task(name, "text-classification", labels, policy=policy or None)
    added = ll.add_items(
        task["id"], [{"data": t, "external_id": f"t{n}"} for n, t in enumerate(texts)]
    )
    return task["id"], [it["id"] for it in added["items"]]


def human_labels(ll: Client, task_id: int, item_id: int) -> list[dict[str, Any]]:
    return [a for a in ll.get_item(task_id, item_id)["annotations"] if a["source"] == "human"]


def open_task(page: Any, live_url: str, task_id: int) -> int:
    page.goto(f"{live_url}/ui/label.html?task={task_id}")
    return on_screen(page)


def wait_saved(page: Any, item: int) -> None:
    page.wait_for_selector(f"[data-testid=history-{item}] .chip:text-is('saved')")


def test_a_double_click_labels_only_the_item_on_screen(live_url: str, page: Any) -> None:
    with Client(live_url) as ll:
        task_id, _ = text_task(ll, "double", ["spam", "ham"], [f"message {n}" for n in range(6)])
    first = open_task(page, live_url, task_id)
    # The first click labels the item and shows the next one at once, under the pointer; the
    # second click of the double-click lands on the next item's choice and must be ignored.
    page.dblclick("[data-testid=choice-spam]")
    second = wait_for_next(page, first)
    wait_saved(page, first)
    with Client(live_url) as ll:
        assert [a["labels"] for a in human_labels(ll, task_id, first)] == [["spam"]]
        assert human_labels(ll, task_id, second) == []
        assert ll.get_task(task_id)["counts"]["human_labelled"] == 1
    assert on_screen(page) == second
    assert page.text_content("[data-testid=n-session]") == "1"
    # A single click still labels the item on screen.
    page.click("[data-testid=choice-ham]")
    wait_for_next(page, second)
    wait_saved(page, second)
    with Client(live_url) as ll:
        assert [a["labels"] for a in human_labels(ll, task_id, second)] == [["ham"]]


def test_keys_pick_labels_by_name_by_position_or_by_the_tasks_hotkeys(
    live_url: str, page: Any
) -> None:
    digits = [str(d) for d in range(10)]
    with Client(live_url) as ll:
        by_name, _ = text_task(ll, "digits by name", digits, [f"digit {n}" for n in range(4)])
        by_position, _ = text_task(ll, "animals", ["cat", "dog", "bird"], ["a", "b", "c"])
        custom, _ = text_task(
            ll, "animals, own keys", ["cat", "dog", "bird"], ["x", "y", "z"],
            hotkeys={"cat": "c", "dog": "d"},
        )  # fmt: skip
        with pytest.raises(InvalidRequestError, match="hotkeys"):
            ll.create_task(
                "bad keys", "text-classification", ["a", "b"], policy={"hotkeys": {"c": "x"}}
            )
        with pytest.raises(InvalidRequestError, match="hotkey"):
            ll.create_task(
                "bad keys", "text-classification", ["a", "b"], policy={"hotkeys": {"a": "xy"}}
            )

    # Labels that are digits: the key "1" gives the label "1" (it gave "0" by position before).
    item = open_task(page, live_url, by_name)
    assert page.text_content("[data-testid=choice-1] kbd") == "1"
    assert page.text_content("[data-testid=choice-0] kbd") == "0"
    page.keyboard.press("1")
    wait_for_next(page, item)
    wait_saved(page, item)
    assert "by its name" in (page.text_content("[data-testid=hint]") or "")

    # Longer labels: positions, shown next to each choice.
    animal = open_task(page, live_url, by_position)
    assert [page.text_content(f"[data-testid=choice-{a}] kbd") for a in ("cat", "dog", "bird")] == [
        "1", "2", "3",
    ]  # fmt: skip
    page.keyboard.press("2")
    wait_for_next(page, animal)
    wait_saved(page, animal)

    # The task's own hotkeys; a label without one keeps its position.
    own = open_task(page, live_url, custom)
    assert [page.text_content(f"[data-testid=choice-{a}] kbd") for a in ("cat", "dog", "bird")] == [
        "c", "d", "3",
    ]  # fmt: skip
    page.keyboard.press("d")
    wait_for_next(page, own)
    wait_saved(page, own)

    with Client(live_url) as ll:
        assert human_labels(ll, by_name, item)[-1]["labels"] == ["1"]
        assert human_labels(ll, by_position, animal)[-1]["labels"] == ["dog"]
        assert human_labels(ll, custom, own)[-1]["labels"] == ["dog"]


def test_a_held_key_labels_one_item(live_url: str, page: Any) -> None:
    with Client(live_url) as ll:
        task_id, _ = text_task(ll, "held key", ["spam", "ham"], [f"m{n}" for n in range(6)])
    first = open_task(page, live_url, task_id)
    # A key held down repeats: only the first press labels (the others have `repeat` set).
    page.keyboard.down("1")
    page.evaluate(
        "() => { for (let i = 0; i < 3; i++) document.dispatchEvent("
        "new KeyboardEvent('keydown', {key: '1', repeat: true, bubbles: true})); }"
    )
    page.keyboard.up("1")
    second = wait_for_next(page, first)
    wait_saved(page, first)
    with Client(live_url) as ll:
        assert ll.get_task(task_id)["counts"]["human_labelled"] == 1
        assert human_labels(ll, task_id, second) == []
    assert page.text_content("[data-testid=n-session]") == "1"


def test_back_shows_the_label_and_a_correction_is_appended(live_url: str, page: Any) -> None:
    with Client(live_url) as ll:
        task_id, _ = text_task(
            ll, "back and undo", ["spam", "ham"], [f"text {n}" for n in range(5)]
        )
    page.goto(f"{live_url}/ui/label.html?task={task_id}&annotator=Grace")
    first = on_screen(page)
    page.keyboard.press("1")  # spam
    second = wait_for_next(page, first)

    # Backspace: the previous item, with the label it was given.
    page.keyboard.press("Backspace")
    assert wait_for_next(page, second) == first
    assert "spam" in (page.text_content("[data-testid=review-label]") or "")
    assert "selected" in (page.get_attribute("[data-testid=choice-spam]", "class") or "")
    page.screenshot(path=str(ARTIFACTS / "label-back.png"), full_page=True)

    # Another label is a correction: appended, and the page returns to where the person was.
    page.keyboard.press("2")  # ham
    assert wait_for_next(page, first) == second
    page.wait_for_selector(f"[data-testid=history-{first}]:has-text('corrected')")
    wait_saved(page, first)
    with Client(live_url) as ll:
        history = human_labels(ll, task_id, first)
        assert [a["labels"] for a in history] == [["spam"], ["ham"]]
        assert {a["annotator"] for a in history} == {"Grace"}
        assert ll.get_item(task_id, first)["labels"] == ["ham"]
        assert ll.get_task(task_id)["counts"]["human_labelled"] == 1

    # The button goes back too; Enter keeps the label (nothing is sent) and comes back.
    page.click("[data-testid=go-back]")
    assert wait_for_next(page, second) == first
    assert "ham" in (page.text_content("[data-testid=review-label]") or "")
    page.keyboard.press("Enter")
    assert wait_for_next(page, first) == second

    # Label the rest; the session history lists each item with its label, newest first.
    labelled = [first]
    item = second
    for _ in range(3):
        page.keyboard.press("1")
        labelled.append(item)
        item = wait_for_next(page, item)
    rows = page.locator("[data-testid=history] li")
    assert rows.count() == 4
    assert rows.nth(0).get_attribute("data-testid") == f"history-{labelled[-1]}"
    assert rows.nth(3).get_attribute("data-testid") == f"history-{first}"
    # An entry opens that item again, for a look or a correction.
    rows.nth(3).click()
    assert wait_for_next(page, item) == first
    with Client(live_url) as ll:
        wait_until(lambda: ll.get_task(task_id)["counts"]["human_labelled"] == 4)
        assert [a["labels"] for a in human_labels(ll, task_id, first)] == [["spam"], ["ham"]]


def test_the_annotators_name_is_sent_and_remembered(live_url: str, page: Any) -> None:
    with Client(live_url) as ll:
        task_id, _ = text_task(ll, "who", ["spam", "ham"], [f"note {n}" for n in range(4)])
    first = open_task(page, live_url, task_id)
    # No name yet: the labels carry this browser's own guest name, never a shared "web".
    guest = page.get_attribute("[data-testid=annotator]", "placeholder") or ""
    assert guest.startswith("guest-")
    page.keyboard.press("1")
    second = wait_for_next(page, first)
    wait_saved(page, first)

    page.fill("[data-testid=annotator]", "Ada Lovelace")
    page.keyboard.press("Enter")  # leaves the field: keys label again
    page.keyboard.press("2")
    wait_for_next(page, second)
    wait_saved(page, second)
    with Client(live_url) as ll:
        assert human_labels(ll, task_id, first)[0]["annotator"] == guest.split()[0]
        assert human_labels(ll, task_id, second)[0]["annotator"] == "Ada Lovelace"

    page.reload()
    on_screen(page)
    assert page.input_value("[data-testid=annotator]") == "Ada Lovelace"


def test_each_screen_tells_one_truth(live_url: str, page: Any) -> None:
    with Client(live_url) as ll:
        task_id, _ = text_task(ll, "two items", ["spam", "ham"], ["one", "two"])
    first = open_task(page, live_url, task_id)
    # The "training…" chip is hidden unless a job trains (its class's display used to win).
    assert not page.is_visible("[data-testid=training]")
    page.keyboard.press("1")
    wait_for_next(page, first)
    page.keyboard.press("2")
    page.wait_for_selector("[data-testid=all-done]")
    page.wait_for_selector("[data-testid=done-detail]:has-text('from a person')")
    # The header says the same: nothing unlabelled, two labels by people.
    assert page.text_content("[data-testid=n-left]") == "0"
    assert page.text_content("[data-testid=n-human]") == "2"


def test_confidence_is_shown_as_it_is(live_url: str, page: Any) -> None:
    rng = random.Random(3)
    labels = list(TOPICS)
    texts, truth = [], []
    for n in range(60):
        topic = labels[n % 3]
        words = TOPICS[topic].split()
        texts.append(" ".join(rng.sample(words, 5)))
        truth.append(topic)
    with Client(live_url) as ll:
        task_id, ids = text_task(ll, "topics", labels, texts, min_labels=12)
        for item_id, label in list(zip(ids, truth, strict=True))[:24]:
            if ll.annotate(task_id, [{"item_id": item_id, "labels": [label]}])[
                "training_triggered"
            ]:
                ll.wait_for_training(task_id)
        ll.wait_for_training(task_id)
    item = open_task(page, live_url, task_id)
    page.wait_for_selector("[data-testid=suggestion]")
    with Client(live_url) as ll:
        pred = ll.prediction(task_id, item)
    # The highlight's bar is as long as the score, and the three best choices show their scores.
    bar = page.get_attribute(".choice.suggested [data-testid=conf]", "style") or ""
    assert f"width: {100 * pred['score']:.1f}%" in bar
    shown = {
        label: page.text_content(f"[data-testid=score-{label}]")
        for label in labels
        if page.locator(f"[data-testid=score-{label}]").count()
    }
    assert shown == {label: f"{round(100 * s)}%" for label, s in pred["scores"].items()}

    # Quick accept/reject: a sure pre-label is offered as Accept / Reject (the topics are far apart,
    # so the model is sure); Reject shows every choice, and the person picks the right one.
    assert pred["score"] >= 0.9
    page.check("[data-testid=quick]")
    page.wait_for_selector(f"[data-testid=quick-accept]:has-text('{pred['labels'][0]}')")
    page.click("[data-testid=quick-accept]")
    second = wait_for_next(page, item)
    with Client(live_url) as ll:
        pred2 = ll.prediction(task_id, second)
    assert pred2["score"] >= 0.9
    page.wait_for_selector("[data-testid=quick-accept]")
    page.keyboard.press("Escape")
    other = next(label for label in labels if label not in pred2["labels"])
    page.click(f"[data-testid=choice-{other}]")
    wait_for_next(page, second)
    wait_saved(page, second)
    with Client(live_url) as ll:
        accepted, changed = human_labels(ll, task_id, item), human_labels(ll, task_id, second)
        assert accepted[-1]["labels"] == pred["labels"] and accepted[-1]["edited"] is False
        assert changed[-1]["labels"] == [other] and changed[-1]["edited"] is True
    # The choice is remembered by this browser.
    page.reload()
    page.wait_for_selector("[data-testid=quick]:checked")
    # Notices: the first model, or accuracy moved by two points since the last notice.
    rule = "([b, n, a, acc]) => worthANotice(b, n, a, acc)"
    assert page.evaluate(rule, [None, 0, None, 0.7]) is True
    assert page.evaluate(rule, [3, 4, 0.90, 0.91]) is False
    assert page.evaluate(rule, [3, 4, 0.90, 0.93]) is True
    assert page.evaluate(rule, [4, 3, 0.93, 0.90]) is True


def test_audits_are_labelled_blind(live_url: str, page: Any) -> None:
    """With auto-labelling, /next hands out random audits whose labels certify the threshold:
    the page shows them without the model's suggestion (and says none was shown)."""
    rng = random.Random(5)
    labels = list(TOPICS)
    texts, truth = [], []
    for n in range(60):
        topic = labels[n % 3]
        texts.append(" ".join(rng.sample(TOPICS[topic].split(), 5)))
        truth.append(topic)
    with Client(live_url) as ll:
        task_id, ids = text_task(
            ll, "audited", labels, texts, min_labels=12, auto_label={"target_accuracy": 0.9}
        )
        by_id = dict(zip(ids, truth, strict=True))
        for item_id in ids[:15]:
            if ll.annotate(task_id, [{"item_id": item_id, "labels": [by_id[item_id]]}])[
                "training_triggered"
            ]:
                ll.wait_for_training(task_id)
        ll.wait_for_training(task_id)
    item = open_task(page, live_url, task_id)
    seen = {"audit": [], "suggested": []}
    for _ in range(6):
        page.wait_for_selector("[data-testid=audit], [data-testid=suggestion]")
        if page.locator("[data-testid=audit]").count():
            assert page.locator(".choice.suggested").count() == 0
            assert page.locator("[data-testid=conf], .choice .score").count() == 0
            seen["audit"].append(item)
        else:
            seen["suggested"].append(item)
        page.click(f"[data-testid=choice-{by_id[item]}]")
        item = wait_for_next(page, item)
    assert seen["audit"] and seen["suggested"]
    page.wait_for_selector(f"[data-testid=history-{seen['audit'][-1]}] .chip:text-is('saved')")
    page.wait_for_selector(f"[data-testid=history-{seen['suggested'][-1]}] .chip:text-is('saved')")
    with Client(live_url) as ll:
        for audit in seen["audit"]:
            assert human_labels(ll, task_id, audit)[-1]["shown_version"] is None
        for shown in seen["suggested"]:
            assert human_labels(ll, task_id, shown)[-1]["shown_version"] is not None
