"""The dashboard and the labelling page in headless Chromium, against a live server.

Screenshots land in ``test-artifacts/`` (git-ignored); the README's images are made the same way.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from labelloop.client import Client
from tests.support import wait_until
from tests.web.conftest import ARTIFACTS, PAGE_ONLY, on_screen, wait_for_next

pytestmark = pytest.mark.browser
LABELS = [str(d) for d in range(10)]


def image_task(ll: Client, files: list[tuple[str, str]], name: str) -> tuple[int, dict[int, str]]:
    task = ll.create_task(name, "image-classification", LABELS, policy={"min_labels": 10})
    added = ll.add_items(task["id"], [{"data": p, "external_id": p} for p, _ in files])
    truth = {it["id"]: files[n][1] for n, it in enumerate(added["items"])}
    return task["id"], truth


@PAGE_ONLY
def test_dashboard_shows_versions_and_chart(
    live_url: str, page: Any, digit_files: list[tuple[str, str]]
) -> None:
    with Client(live_url) as ll:
        task_id, truth = image_task(ll, digit_files[:80], "digits on the dashboard")
        # One item per class first, so that the 10th label trains model-time0.
        by_class: dict[str, int] = {}
        for item_id, label in truth.items():
            by_class.setdefault(label, item_id)
        rest = [i for i in truth if i not in by_class.values()]
        for n, item_id in enumerate([*by_class.values(), *rest[:12]]):
            who = ("Ada", "Grace")[n % 2]
            if ll.annotate(
                task_id, [{"item_id": item_id, "labels": [truth[item_id]], "annotator": who}]
            )["training_triggered"]:
                ll.wait_for_training(task_id)
        versions = ll.models(task_id)
        assert len(versions) >= 2

    page.goto(f"{live_url}/ui/#task={task_id}")
    page.wait_for_selector("[data-testid=task-detail]")
    assert page.text_content("[data-testid=task-name]") == "digits on the dashboard"
    for v in versions:
        page.wait_for_selector(f"[data-testid=version-{v['version']}]")
    # The accuracy chart has one point per version, the serving one ringed.
    points = page.locator("[data-testid=chart-accuracy] circle.point")
    assert points.count() >= len(versions)
    assert page.locator("[data-testid=chart-accuracy] circle.serving").count() == 1
    assert page.locator("[data-testid=chart-edit-rate] polyline").count() == 1
    served = next(v["version"] for v in versions if v["serving"])
    assert f"model-time{served}" in page.text_content("[data-testid=serving]")
    assert page.text_content("[data-testid=count-human]") == "22"
    page.wait_for_selector("[data-testid=suspects], [data-testid=suspects-none]")
    # Endpoints of other components answer 404 here: the page says so instead of failing.
    page.wait_for_selector("[data-testid=workers-na]")
    page.wait_for_selector("[data-testid=machines-na]")
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # Roll back to another version with its button; the page refreshes by itself.
    other = next(v["version"] for v in versions if not v["serving"] and v["status"] == "ready")
    page.click(f"[data-testid=promote-{other}]")
    page.wait_for_function(
        f"document.querySelector('[data-testid=serving]').textContent.includes('model-time{other}')"
    )
    with Client(live_url) as ll:
        assert ll.get_task(task_id)["served_version"] == other


def test_labelling_by_keyboard_until_the_model_takes_over(
    live_url: str, page: Any, digit_files: list[tuple[str, str]]
) -> None:
    with Client(live_url) as ll:
        task_id, truth = image_task(ll, digit_files[:120], "digits by keyboard")
    page.goto(f"{live_url}/ui/label.html?task={task_id}")
    page.wait_for_selector("[data-testid=no-model]")
    page.wait_for_selector("[data-testid=item-image][src^='blob:']")
    page.screenshot(path=str(ARTIFACTS / "label-no-model.png"), full_page=True)

    def current() -> int:
        return on_screen(page)

    # Label by keys until the first model serves: labels that are digits are picked by their name.
    labelled = 0
    while "model-time" not in (page.text_content("[data-testid=serving]") or ""):
        assert labelled < 60, "no model served after 60 labels"
        item = current()
        page.keyboard.press(truth[item])
        wait_for_next(page, item)
        labelled += 1
        if labelled >= 10:
            page.wait_for_timeout(300)  # a person takes a moment per item; training runs meanwhile
    assert labelled >= 10
    page.wait_for_selector("[data-testid=toast]:has-text('now serves')")

    # From now on items come with the model's pre-label highlighted and its score: confirm them.
    confirmed: list[int] = []
    while len(confirmed) < 5:
        page.wait_for_selector("[data-testid=suggestion]")
        suggestion = page.text_content("[data-testid=suggestion]") or ""
        assert re.search(r"model-time\d+ suggests .+ \(score \d+%\)", suggestion)
        # One truth: the suggestion's version is the one the chip names, or the page says that
        # the chip's version serves from the next item on.
        page.wait_for_function(
            """() => {
              const v = (sel) => ((document.querySelector(sel) || {}).textContent || "")
                .match(/model-time(\\d+)/);
              const chip = v("[data-testid=serving]"), shown = v("[data-testid=suggestion]");
              const note = v("[data-testid=version-note]");
              return chip && shown && (chip[1] === shown[1] || (note && note[1] === chip[1]));
            }"""
        )
        highlighted = page.locator(".choice.suggested")
        assert highlighted.count() == 1
        assert re.search(r"\d+%", highlighted.text_content() or "")
        if not confirmed:
            page.screenshot(path=str(ARTIFACTS / "label-prelabel.png"), full_page=True)
        item = current()
        page.keyboard.press("Enter")
        wait_for_next(page, item)
        confirmed.append(item)

    with Client(live_url) as ll:
        wait_until(lambda: ll.get_task(task_id)["counts"]["human_labelled"] == labelled + 5)
        for item in confirmed:
            human = [a for a in ll.get_item(task_id, item)["annotations"] if a["source"] == "human"]
            assert human[-1]["edited"] is False and human[-1]["shown_version"] is not None
        assert ll.metrics(task_id)["edit_rate"]["submitted"] == labelled + 5


@PAGE_ONLY
def test_a_newcomer_creates_tasks_from_a_folder_and_from_a_csv(
    live_url: str, page: Any, digit_files: list[tuple[str, str]], image_root: Any, tmp_path: Any
) -> None:
    page.goto(f"{live_url}/")
    page.wait_for_selector("text=No task yet.")
    page.screenshot(path=str(ARTIFACTS / "dashboard-empty.png"))

    # Images from a folder on the server, picked in the folder browser.
    page.click("[data-testid=new-task]")
    page.fill("input[name=name]", "digits from a folder")
    page.fill("textarea[name=labels]", ", ".join(LABELS))
    page.click(f"[data-testid=folder]:has-text('{image_root.name}')")
    page.wait_for_selector(f"#folder-info:has-text('{len(digit_files)} images here')")
    page.screenshot(path=str(ARTIFACTS / "new-task.png"))
    page.click("[data-testid=create-submit]")
    page.wait_for_selector("[data-testid=task-name]:has-text('digits from a folder')")
    page.wait_for_selector(f"[data-testid=count-unlabelled]:text-is('{len(digit_files)}')")

    # Texts from an uploaded CSV; then one is labelled on the labelling page.
    csv = tmp_path / "reviews.csv"
    csv.write_text("id,text\nr1,I loved every minute\nr2,Dull and far too long\n")
    page.click("[data-testid=new-task]")
    page.fill("input[name=name]", "reviews")
    page.select_option("select[name=kind]", "text")
    page.fill("textarea[name=labels]", "positive\nnegative")
    page.set_input_files("input[name=csv]", str(csv))
    page.click("[data-testid=create-submit]")
    page.wait_for_selector("[data-testid=task-name]:has-text('reviews')")
    page.wait_for_selector("[data-testid=count-unlabelled]:text-is('2')")
    page.click("[data-testid=label-link]")
    page.wait_for_selector("[data-testid=item-text]")
    text = page.text_content("[data-testid=item-text]")
    assert text in ("I loved every minute", "Dull and far too long")
    page.keyboard.press("1" if "loved" in text else "2")
    page.wait_for_selector("[data-testid=item-text]:not(:text-is('" + text + "'))")
    with Client(live_url) as ll:
        reviews = next(t for t in ll.list_tasks() if t["name"] == "reviews")
        wait_until(lambda: ll.get_task(reviews["id"])["counts"]["human_labelled"] == 1)


@PAGE_ONLY
def test_a_single_server_is_asked_its_mode_once_not_polled_for_a_cluster(
    live_url: str, page: Any
) -> None:
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url.removeprefix(live_url)))
    page.goto(f"{live_url}/ui/")
    page.wait_for_selector("[data-testid=single-server]")
    page.wait_for_selector("[data-testid=workers-na]")
    page.wait_for_selector("[data-testid=machines-na]")
    # Three refreshes later: still one question, and no request for a cluster endpoint.
    for _ in range(3):
        page.wait_for_event("request", lambda r: r.url.endswith("/health"))
    assert asked.count("/api/v1/info") == 1
    assert not [u for u in asked if "/cluster/" in u]
