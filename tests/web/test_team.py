"""A team on one task, in headless Chromium: two annotators on two pages get different items, the
dashboard shows progress and agreement, the item browser corrects a flagged label, and the
dashboard exports, archives and deletes a task."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from labelloop.client import Client
from tests.support import wait_until
from tests.web.conftest import ARTIFACTS, on_screen, wait_for_next

pytestmark = pytest.mark.browser

TOPICS = {
    "sport": "football goal match team referee league striker score stadium",
    "food": "pasta recipe oven garlic tomato flavour dinner bread butter",
    "music": "guitar concert melody song drummer chorus album piano band",
}


def topic_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    labels = list(TOPICS)
    truth = [labels[k % 3] for k in range(n)]
    return [" ".join(rng.sample(TOPICS[t].split(), 5)) for t in truth], truth


def test_two_annotators_on_two_pages_get_different_items(
    live_url: str, two_pages: list[Any]
) -> None:
    texts, truth = topic_texts(40, 1)
    with Client(live_url) as ll:
        task = ll.create_task(
            "two people", "text-classification", list(TOPICS), policy={"min_labels": 1000}
        )
        added = ll.add_items(task["id"], [{"data": t} for t in texts])
    by_id = {it["id"]: truth[n] for n, it in enumerate(added["items"])}
    ada, bob = two_pages
    ada.goto(f"{live_url}/ui/label.html?task={task['id']}&annotator=Ada")
    bob.goto(f"{live_url}/ui/label.html?task={task['id']}&annotator=Bob")
    seen: dict[str, list[int]] = {"Ada": [], "Bob": []}
    for _ in range(5):
        for name, pg in (("Ada", ada), ("Bob", bob)):
            item = on_screen(pg)
            seen[name].append(item)
            pg.click(f"[data-testid=choice-{by_id[item]}]")
            wait_for_next(pg, item)
    # What each page shows next, and what it holds, is its own too.
    seen["Ada"].append(on_screen(ada))
    seen["Bob"].append(on_screen(bob))
    assert not set(seen["Ada"]) & set(seen["Bob"]), seen
    with Client(live_url) as ll:
        wait_until(lambda: ll.progress(task["id"])["human_labels"] == 10)
        progress = ll.progress(task["id"])
        by = {a["annotator"]: a for a in progress["annotators"]}
        assert by["Ada"]["labels"] == 5 and by["Bob"]["labels"] == 5
        assert by["Ada"]["holding"] > 0 and by["Bob"]["holding"] > 0
        # Every labelled item carries one person's label.
        labelled = ll.list_items(task["id"], source="human", limit=50)["items"]
        assert len(labelled) == 10 and all(len(it["annotators"]) == 1 for it in labelled)

    # The dashboard shows each annotator's progress.
    ada.goto(f"{live_url}/ui/#task={task['id']}")
    ada.wait_for_selector("[data-testid=annotator-Ada]")
    assert ada.text_content("[data-testid=progress-done]") == "10"
    assert ada.text_content("[data-testid=progress-left]") == "30"
    cells = ada.locator("[data-testid=annotator-Bob] td").all_text_contents()
    assert cells[:3] == ["Bob", "5", "5"]  # name, labels, items


def test_a_flagged_label_opens_in_the_item_browser_and_is_corrected(
    live_url: str, page: Any
) -> None:
    texts, truth = topic_texts(45, 7)
    with Client(live_url) as ll:
        task = ll.create_task(
            "flags",
            "text-classification",
            list(TOPICS),
            policy={"min_labels": 30, "cv_folds": 3, "seed": 2, "overlap": 1},
        )
        ids = [it["id"] for it in ll.add_items(task["id"], [{"data": t} for t in texts])["items"]]
        wrong = ids[0]  # a sport text labelled music
        ll.annotate(
            task["id"],
            [
                {
                    "item_id": i,
                    "labels": ["music" if i == wrong else truth[n]],
                    "annotator": "Ada" if n % 2 else "Bob",
                }
                for n, i in enumerate(ids[:30])
            ],
        )
        wait_until(lambda: ll.get_task(task["id"])["served_version"] is not None)
        ll.wait_for_training(task["id"])
        assert wrong in {s["item_id"] for s in ll.suspects(task["id"])["suspects"]}

    page.goto(f"{live_url}/ui/#task={task['id']}")
    page.click(f"[data-testid=suspect-link-{wrong}]")
    page.wait_for_selector(f"[data-testid=item-title]:has-text('Item #{wrong}')")
    assert "music" in (page.text_content("[data-testid=item-label]") or "")
    assert page.get_attribute(f"[data-testid=row-{wrong}]", "class") == "active"
    page.fill("[data-testid=annotator]", "Cleo")
    page.click("[data-testid=relabel-sport]")
    page.wait_for_selector("[data-testid=item-label]:has-text('sport')")
    page.wait_for_selector(f"[data-testid=row-{wrong}] [data-testid=row-label]:text-is('sport')")
    page.wait_for_selector("[data-testid=history] tr:nth-child(2)")
    page.screenshot(path=str(ARTIFACTS / "items.png"), full_page=True)
    with Client(live_url) as ll:
        history = [
            a for a in ll.get_item(task["id"], wrong)["annotations"] if a["source"] == "human"
        ]
        assert [(a["labels"], a["annotator"]) for a in history] == [
            (["music"], "Bob"),
            (["sport"], "Cleo"),
        ]

    # Filters: the people's labels of one annotator; no row of another.
    page.select_option("[data-testid=filter-source]", "human")
    page.fill("[data-testid=filter-annotator]", "Ada")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=range]:has-text('of 15')")
    rows = page.locator("[data-testid=items] tbody tr")
    assert rows.count() == 15
    assert all("Ada" in (rows.nth(k).text_content() or "") for k in range(15))
    page.select_option("[data-testid=filter-source]", "none")
    page.fill("[data-testid=filter-annotator]", "")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=range]:has-text('of 15')")
    page.locator("[data-testid=items] tbody tr").first.click()
    page.wait_for_selector("[data-testid=item-label]:has-text('none')")


def test_export_archive_and_delete_from_the_dashboard(live_url: str, page: Any) -> None:
    texts, truth = topic_texts(6, 3)
    with Client(live_url) as ll:
        task = ll.create_task("to export", "text-classification", list(TOPICS))
        ids = [it["id"] for it in ll.add_items(task["id"], [{"data": t} for t in texts])["items"]]
        ll.annotate(
            task["id"],
            [
                {"item_id": i, "labels": [truth[n]], "annotator": "Ada"}
                for n, i in enumerate(ids[:4])
            ],
        )
    page.goto(f"{live_url}/ui/#task={task['id']}")
    page.wait_for_selector("[data-testid=task-name]:has-text('to export')")

    with page.expect_download() as got:
        page.click("[data-testid=export-jsonl]")
    download = got.value
    assert download.suggested_filename == "to_export.jsonl"
    rows = [json.loads(line) for line in Path(download.path()).read_text().splitlines()]
    assert len(rows) == 6
    assert {r["source"] for r in rows} == {"human", None}
    assert {"labels", "source", "model_version", "score", "annotator"} <= set(rows[0])
    with page.expect_download() as got:
        page.click("[data-testid=export-csv]")
    table = list(csv.DictReader(io.StringIO(Path(got.value.path()).read_text())))
    assert len(table) == 6 and table[0]["source"] == "human" and table[0]["labels"] == truth[0]

    # Archive: kept, listed apart, no longer handed out; then restored.
    page.click("[data-testid=archive]")
    page.wait_for_selector("[data-testid=archived]")
    page.wait_for_selector("[data-testid=archived-tasks]")
    assert page.locator("[data-testid=label-link]").count() == 0
    with Client(live_url) as ll:
        assert ll.get_task(task["id"])["archived"] is True
    page.click("[data-testid=archive]")
    page.wait_for_selector("[data-testid=label-link]")

    # Delete asks for the task's name first.
    page.click("[data-testid=delete]")
    assert page.is_disabled("[data-testid=delete-confirm]")
    page.fill("[data-testid=delete-name]", "to expor")
    assert page.is_disabled("[data-testid=delete-confirm]")
    page.fill("[data-testid=delete-name]", "to export")
    page.click("[data-testid=delete-confirm]")
    page.wait_for_selector("text=No task yet.")
    with Client(live_url) as ll:
        assert ll.list_tasks() == []


def test_unreadable_items_say_which_file_and_why(
    live_url: str, page: Any, image_root: Path, digit_files: list[tuple[str, str]]
) -> None:
    broken = image_root / "scan-0042.png"
    broken.write_bytes(b"this is not a picture")
    with Client(live_url) as ll:
        task = ll.create_task("scans", "image-classification", ["a", "b"])
        ll.add_items(task["id"], [{"data": digit_files[0][0]}, {"data": str(broken)}])
        wait_until(lambda: ll.get_task(task["id"])["counts"]["failed"] == 1)
    page.goto(f"{live_url}/ui/#task={task['id']}")
    page.click("[data-testid=show-unreadable]")
    page.wait_for_selector("[data-testid=unreadable-list]:has-text('scan-0042.png')")
    row = page.text_content("[data-testid=unreadable-list] tbody tr") or ""
    with Client(live_url) as ll:
        (failed,) = ll.list_items(task["id"], status="failed")["items"]
    assert failed["error"] and failed["error"][:40] in row
