"""The labelling page for text spans, in headless Chromium: select text, press a label's key to
mark it; a mark is picked by a click (or Tab) and then relabelled by a key or button, removed by
Delete, a second click or the Remove button; a model's marks are shown to start from and Enter
accepts them; Enter submits the spans (none: "no entity here")."""

from __future__ import annotations

from typing import Any

import pytest

from labelloop.client import Client
from labelloop.runtime import Runtime
from labelloop.store.models import ModelVersion, Prediction, Task
from tests.span_support import LABELS, corpus
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
    page.click("[data-testid=span-17-32]")  # ... picked by a click ...
    page.wait_for_selector("[data-testid=span-17-32].focus")
    page.click("[data-testid=span-17-32]")  # ... and removed by a second one
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


def serve_spans(
    rt: Runtime, task_id: int, shown: dict[int, list[tuple[int, int, str, float]]]
) -> None:
    """A served version 0 whose stored pre-labels are ``shown`` (item id -> spans with scores):
    what the page gets from ``/next`` once a span learner serves, without training one here."""
    with rt.session() as s:
        s.add(
            ModelVersion(
                task_id=task_id,
                version=0,
                job_key=f"stub-{task_id}",
                learner="spacy-ner",
                status="ready",
                label_revision=0,
                promoted=True,
            )
        )
        s.get_one(Task, task_id).served_version = 0
        for item_id, spans in shown.items():
            s.add(
                Prediction(
                    item_id=item_id,
                    task_id=task_id,
                    version=0,
                    labels=[{"start": a, "end": b, "label": label} for a, b, label, _ in spans],
                    scores=[score for *_, score in spans],
                    score=min((score for *_, score in spans), default=1.0),
                    uncertainty=0.5,
                )
            )


GRACE = "Grace Hopper visited Paris."


def test_pre_labelled_spans_are_accepted_relabelled_and_removed(
    live_url: str, page: Any, rt: Runtime
) -> None:
    with Client(live_url) as ll:
        task = ll.create_task("ner pre", "text-spans", ["PER", "LOC"])
        added = ll.add_items(task["id"], [{"data": t} for t in (TEXTS[0], GRACE)])
    ada, grace = (it["id"] for it in added["items"])
    serve_spans(
        rt,
        task["id"],
        {
            # Right, wrong (not an entity), right offsets with the wrong label, right.
            ada: [
                (0, 12, "PER", 0.9),
                (13, 16, "LOC", 0.3),
                (17, 32, "LOC", 0.6),
                (36, 42, "LOC", 0.8),
            ],
            grace: [(0, 12, "PER", 0.95), (21, 26, "LOC", 0.9)],
        },
    )
    page.goto(f"{live_url}/ui/label.html?task={task['id']}")
    first = on_screen(page)
    for n in range(2):
        if n:
            first = wait_for_next(page, first)
        if first == grace:
            # The model's marks are shown (dashed, with their scores) and Enter accepts them.
            page.wait_for_selector("[data-testid=span-0-12].pre")
            assert page.get_attribute("[data-testid=span-21-26]", "data-pre") == "90"
            page.keyboard.press("Enter")
            continue
        assert first == ada
        page.wait_for_selector("[data-testid=span-13-16].pre")
        # Keys: Tab picks the marks in order; Delete removes one, a label's key relabels one.
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        page.wait_for_selector("[data-testid=span-13-16].focus")
        page.keyboard.press("Delete")
        page.wait_for_selector("[data-testid=span-13-16]", state="detached")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        page.wait_for_selector("[data-testid=span-17-32].focus")
        page.keyboard.press("1")
        page.wait_for_selector("[data-testid=span-17-32][data-label=PER]:not(.pre)")
        page.keyboard.press("Escape")
        page.wait_for_selector(".span.focus", state="detached")
        # Mouse: a click picks a mark, a label's button relabels it, Remove removes it.
        page.click("[data-testid=span-36-42]")
        page.click("[data-testid=choice-PER]")
        page.wait_for_selector("[data-testid=span-36-42][data-label=PER]")
        page.click("[data-testid=remove-span]")
        page.wait_for_selector("[data-testid=span-36-42]", state="detached")
        select(page, 36, 42)
        page.keyboard.press("2")
        page.wait_for_selector("[data-testid=span-36-42][data-label=LOC]:not(.pre)")
        page.keyboard.press("Enter")
    for item in (ada, grace):
        page.wait_for_selector(f"[data-testid=history-{item}] .chip:text-is('saved')")
    with Client(live_url) as ll:
        got = {i: ll.get_item(task["id"], i) for i in (ada, grace)}
    assert got[ada]["labels"] == [
        {"start": 0, "end": 12, "label": "PER"},
        {"start": 17, "end": 32, "label": "PER"},
        {"start": 36, "end": 42, "label": "LOC"},
    ]
    assert got[grace]["labels"] == [
        {"start": 0, "end": 12, "label": "PER"},
        {"start": 21, "end": 26, "label": "LOC"},
    ]
    # Measured against what was shown: the corrected text was edited, the accepted one not.
    assert [got[i]["annotations"][-1]["edited"] for i in (ada, grace)] == [True, False]
    assert [got[i]["annotations"][-1]["shown_version"] for i in (ada, grace)] == [0, 0]


def test_the_dashboard_shows_entity_f1_for_a_span_task(live_url: str, page: Any) -> None:
    data = corpus(48, seed=3)
    with Client(live_url) as ll:
        task = ll.create_task(
            "ner curves", "text-spans", LABELS, policy={"min_labels": 40, "cv_folds": 3}
        )
        # Spans that come with the data train the first version (imported human labels).
        lines = [{"id": n, "text": t, "spans": spans} for n, (t, spans) in enumerate(data[:40])]
        assert ll.import_jsonl(task["id"], lines)["labelled"] == 40
        ll.add_items(task["id"], [{"data": t} for t, _ in data[40:]])
        wait_until(lambda: ll.get_task(task["id"])["served_version"] is not None, timeout=300)
        ll.wait_for_training(task["id"])
        served = ll.get_task(task["id"])["served_version"]
        metrics = next(v for v in ll.models(task["id"]) if v["version"] == served)["metrics"]
    f1 = metrics["cv_entity_f1"]
    page.goto(f"{live_url}/ui/#task={task['id']}")
    page.wait_for_selector(f"[data-testid=version-{served}]")
    chart = "[data-testid=chart-accuracy]"
    assert "Held-out entity F1 per version" in page.text_content(chart)
    assert page.locator(f"{chart} circle.serving").count() == 1
    precision = f"precision {100 * metrics['cv_entity_precision']:.1f}%"
    assert precision in page.text_content(f"{chart} circle.serving title")
    headers = page.text_content("[data-testid=versions] thead")
    assert "entity F1" in headers and "macro-F1" not in headers
    assert f"{100 * f1:.1f}%" in page.text_content(f"[data-testid=version-{served}]")
    assert page.locator("[data-testid=chart-edit-rate] polyline").count() == 1
    # The labelling page's chip names the served version's entity F1.
    page.goto(f"{live_url}/ui/label.html?task={task['id']}")
    page.wait_for_function(
        "(text) => document.querySelector('[data-testid=serving]').textContent.includes(text)",
        arg=f"entity F1 {int(100 * f1 + 0.5)}%",  # as Math.round
    )
