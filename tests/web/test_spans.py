"""The labelling page for text spans, in headless Chromium: select text, press a label's key to
mark it, click a mark to remove it, Enter submits the spans (none: "no entity here")."""

from __future__ import annotations

from typing import Any

import pytest

from labelloop.client import Client
from tests.support import wait_until
from tests.web.conftest import on_screen, wait_for_next

pytestmark = pytest.mark.browser

TEXTS = ["Ada Lovelace met Charles Babbage in London.", "Nothing here."]


def select(page: Any, start: int, end: int) -> None:
    """Select characters ``start``-``end`` of the item's text as a mouse drag would."""
    page.evaluate(
        """([start, end]) => {
          const el = document.querySelector("[data-testid=item-text]");
          const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
          const range = document.createRange();
          let at = 0, node;
          while ((node = walker.nextNode())) {
            const n = node.textContent.length;
            if (start >= at && start <= at + n) range.setStart(node, start - at);
            if (end >= at && end <= at + n) { range.setEnd(node, end - at); break; }
            at += n;
          }
          const sel = window.getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
        }""",
        [start, end],
    )


def test_spans_are_marked_with_keys_removed_by_a_click_and_submitted(
    live_url: str, page: Any
) -> None:
    with Client(live_url) as ll:
        task = ll.create_task("ner", "text-spans", ["PER", "LOC"])
        added = ll.add_items(task["id"], [{"data": t} for t in TEXTS])
    ids = [it["id"] for it in added["items"]]
    page.goto(f"{live_url}/ui/label.html?task={task['id']}")
    first = on_screen(page)
    empty, nothing_first = ids[1], first == ids[1]
    if nothing_first:  # the order is the task's own: label the other text first
        page.keyboard.press("Enter")  # nothing marked: "no entity here"
        first = wait_for_next(page, first)
    assert first == ids[0]
    # A selection with blanks at its ends marks the words only; keys 1 and 2 are PER and LOC.
    select(page, 0, 13)
    page.keyboard.press("1")
    page.wait_for_selector("[data-testid=span-0-12]")
    select(page, 17, 32)
    page.keyboard.press("2")  # a wrong label first ...
    page.click("[data-testid=span-17-32]")  # ... removed by a click
    page.wait_for_selector("[data-testid=span-17-32]", state="detached")
    select(page, 17, 32)
    page.click("[data-testid=choice-PER]")  # the label's button marks the selection too
    select(page, 36, 42)
    page.keyboard.press("2")
    page.wait_for_selector("[data-testid=span-36-42]")
    # The marks leave the text as it is (the label is drawn, not written into the text).
    shown = page.inner_text("[data-testid=item-text]")
    assert "Ada Lovelace met Charles Babbage in London." in shown.replace("\n", "")
    page.keyboard.press("Enter")
    if not nothing_first:
        wait_for_next(page, first)
        page.keyboard.press("Enter")  # nothing marked: "no entity here"
    page.wait_for_selector(f"[data-testid=history-{empty}] .chip:text-is('saved')")
    page.wait_for_selector(f"[data-testid=history-{first}] .chip:text-is('saved')")
    with Client(live_url) as ll:
        assert ll.get_item(task["id"], first)["labels"] == [
            {"start": 0, "end": 12, "label": "PER"},
            {"start": 17, "end": 32, "label": "PER"},
            {"start": 36, "end": 42, "label": "LOC"},
        ]
        assert ll.get_item(task["id"], empty)["labels"] == []
    assert "PER “Ada Lovelace”" in page.inner_text(f"[data-testid=history-{first}]")


def test_a_spans_task_is_created_from_the_dashboard(
    live_url: str, page: Any, tmp_path: Any
) -> None:
    csv = tmp_path / "news.csv"
    csv.write_text("id,text\nn1,Grace Hopper worked in Arlington.\n")
    page.goto(f"{live_url}/")
    page.click("[data-testid=new-task]")
    page.fill("input[name=name]", "news entities")
    page.select_option("select[name=kind]", "spans")
    page.fill("textarea[name=labels]", "PER\nLOC")
    page.set_input_files("input[name=csv]", str(csv))
    page.click("[data-testid=create-submit]")
    page.wait_for_selector("[data-testid=task-name]:has-text('news entities')")
    page.wait_for_selector("[data-testid=count-unlabelled]:text-is('1')")
    with Client(live_url) as ll:
        task = next(t for t in ll.list_tasks() if t["name"] == "news entities")
    assert (task["category"], task["extra"], task["kind"]["widget"]) == (
        "text-spans",
        "multi-class",
        "spans",
    )
    page.click("[data-testid=label-link]")
    page.wait_for_selector("[data-testid=item-text]")
    select(page, 0, 12)
    page.keyboard.press("1")
    page.wait_for_selector("[data-testid=span-0-12]")
    page.keyboard.press("Enter")
    with Client(live_url) as ll:
        item_id = ll.list_items(task["id"])["items"][0]["id"]
        wait_until(lambda: ll.get_item(task["id"], item_id)["labels"] is not None)
        assert ll.get_item(task["id"], item_id)["labels"] == [
            {"start": 0, "end": 12, "label": "PER"}
        ]
