"""The new-task dialog in headless Chromium: a CSV's columns are picked by the person (never
guessed), labels can come from the data (a label column, one folder per class), and what an
import left out is said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from labelloop.client import Client
from tests.web.conftest import PAGE_ONLY

pytestmark = pytest.mark.browser

SPAM = b"label,message\nham,see you at noon\nspam,WIN A PRIZE NOW\nham,call me later\n"


def _task_named(live_url: str, name: str) -> dict[str, Any] | None:
    # Patient: the first text task of a process loads the text libraries (slow on a busy machine).
    with Client(live_url, timeout=120) as ll:
        return next((t for t in ll.list_tasks() if t["name"] == name), None)


@PAGE_ONLY
def test_a_csv_without_a_text_column_asks_for_it(live_url: str, page: Any) -> None:
    page.goto(f"{live_url}/ui/")
    page.click("[data-testid=new-task]")
    page.fill("input[name=name]", "spam or ham")
    page.select_option("select[name=kind]", "text")
    page.set_input_files(
        "[data-testid=csv-file]",
        files=[{"name": "sms.csv", "mimeType": "text/csv", "buffer": SPAM}],
    )
    page.wait_for_selector("[data-testid=text-column]", state="visible")
    # The header is shown; nothing is chosen for the texts, and submitting asks for it.
    options = page.eval_on_selector_all(
        "[data-testid=text-column] option:not([disabled])", "os => os.map(o => o.value)"
    )
    assert options == ["label", "message"]
    assert page.input_value("[data-testid=text-column]") == ""
    page.click("[data-testid=create-submit]")
    page.wait_for_selector("[data-testid=create-error]:has-text('column that holds the texts')")
    assert _task_named(live_url, "spam or ham") is None

    page.select_option("[data-testid=text-column]", "message")
    page.select_option("[data-testid=label-column]", "label")
    page.click("[data-testid=create-submit]")
    page.wait_for_selector(
        ".toast:has-text('3 labelled from the data')", state="attached", timeout=120_000
    )
    task = _task_named(live_url, "spam or ham")
    assert task is not None
    assert task["labels"] == ["ham", "spam"]  # from the label column, the field left empty
    assert task["counts"]["items"] == 3 and task["counts"]["human_labelled"] == 3

    # More texts into the task from its own page: the columns are picked the same way.
    page.wait_for_selector("[data-testid=add-csv]")
    more = b"label,message\nspam,FREE CRUISE\nham,lunch today?\n"
    page.set_input_files(
        "[data-testid=add-csv]",
        files=[{"name": "more.csv", "mimeType": "text/csv", "buffer": more}],
    )
    page.wait_for_selector("[data-testid=add-csv-text]", state="visible")
    page.click("[data-testid=add-csv-go]")
    page.wait_for_selector(
        ".toast:has-text('choose the column that holds the texts')", state="attached"
    )
    page.select_option("[data-testid=add-csv-text]", "message")
    page.select_option("[data-testid=add-csv-label]", "label")
    page.click("[data-testid=add-csv-go]")
    page.wait_for_function(
        "() => document.getElementById('toast').textContent.includes('CSV')", timeout=120_000
    )
    assert "CSV: 2 new item(s) · 2 labelled" in (page.text_content(".toast") or "")


def test_a_task_whose_data_cannot_be_imported_is_not_left_behind(live_url: str, page: Any) -> None:
    page.goto(f"{live_url}/ui/")
    page.click("[data-testid=new-task]")
    page.fill("input[name=name]", "no texts")
    page.fill("[data-testid=labels]", "a, b")
    page.select_option("select[name=kind]", "text")
    empty = b"text,label\n  ,a\n,b\n"
    page.set_input_files(
        "[data-testid=csv-file]", files=[{"name": "e.csv", "mimeType": "text/csv", "buffer": empty}]
    )
    page.wait_for_selector("[data-testid=text-column]", state="visible")
    assert page.input_value("[data-testid=text-column]") == "text"  # named text: preselected
    page.click("[data-testid=create-submit]")
    page.wait_for_selector(
        "[data-testid=create-error]:has-text('no non-empty texts')", timeout=120_000
    )
    assert _task_named(live_url, "no texts") is None


@PAGE_ONLY
def test_a_folder_per_class_names_the_labels(live_url: str, page: Any, image_root: Path) -> None:
    for name, shade in (("cat", 30), ("dog", 220)):
        (image_root / "pets" / name).mkdir(parents=True)
        for n in range(2):
            Image.new("L", (8, 8), shade + n).save(image_root / "pets" / name / f"{name}{n}.png")
    (image_root / "pets" / "dog" / "notes.txt").write_text("good dogs")
    page.goto(f"{live_url}/ui/")
    page.click("[data-testid=new-task]")
    page.fill("input[name=name]", "pets")
    page.click("[data-testid=folder]")  # the import root
    page.click("[data-testid=folder]:has-text('pets')")
    page.wait_for_selector("[data-testid=folder]:has-text('cat')")
    page.check("[data-testid=from-folders]")
    page.click("[data-testid=create-submit]")
    # The toast names the file that was left out, and why.
    page.wait_for_selector(
        ".toast:has-text('dog/notes.txt (a .txt file')", state="attached", timeout=120_000
    )
    task = _task_named(live_url, "pets")
    assert task is not None and task["labels"] == ["cat", "dog"]
    assert task["counts"]["items"] == 4 and task["counts"]["human_labelled"] == 4
