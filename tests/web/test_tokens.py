"""An annotator's token in headless Chromium, on a server that asks for tokens: the pages label as
the token's annotator, and the dashboard neither offers nor may delete, promote or import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labelloop.client import Client, UnauthorizedError
from labelloop.config import Settings
from tests.support import wait_until
from tests.web.conftest import on_screen, wait_for_next

pytestmark = pytest.mark.browser
ADMIN = "the-admin-token-of-this-server"


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None, image_root: Path) -> Settings:
    """The live server of these tests asks for a token."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        import_roots=[image_root],
        api_token=ADMIN,
    )


def test_an_annotator_token_labels_but_may_not_delete(live_url: str, page: Any) -> None:
    with Client(live_url, token=ADMIN) as admin:
        task = admin.create_task(
            "tokens", "text-classification", ["spam", "ham"], policy={"min_labels": 1000}
        )
        admin.add_items(task["id"], [{"data": f"message {n}"} for n in range(6)])
        token = admin.create_annotator_token("Ada")["token"]
    t = task["id"]

    # The admin hands out a link with the token; the page keeps it and drops it from the address.
    page.goto(f"{live_url}/ui/label.html?task={t}&token={token}&annotator=Eve")
    first = on_screen(page)
    assert "token=" not in page.url
    assert page.input_value("[data-testid=annotator]") == "Ada"
    assert page.get_attribute("[data-testid=annotator]", "readonly") is not None
    page.keyboard.press("1")
    wait_for_next(page, first)
    with Client(live_url, token=ADMIN) as admin:
        wait_until(lambda: admin.get_task(t)["counts"]["human_labelled"] == 1)
        (label,) = [a for a in admin.get_item(t, first)["annotations"] if a["source"] == "human"]
        assert label["annotator"] == "Ada" and label["labels"] == ["spam"]

    # The dashboard, with the same token: labelling only; no delete, archive, train, promote, import.
    page.goto(f"{live_url}/ui/#task={t}")
    page.wait_for_selector("[data-testid=annotator-role]:has-text('annotator Ada')")
    for control in ("delete", "archive", "new-task"):
        assert not page.locator(f"[data-testid={control}]").is_visible(), control
    assert page.locator("#train, #add-csv-go").count() == 0
    # Asked anyway (as a script in the page could), the server refuses, in words.
    refused = page.evaluate(
        "(id) => api.del(`/api/v1/tasks/${id}`).then(() => 'deleted', (e) => `${e.status} ${e.message}`)",
        t,
    )
    assert refused.startswith("403 ") and "may read and label" in refused
    with Client(live_url, token=ADMIN) as admin:
        assert admin.get_task(t)["name"] == "tokens"

    # Without any token the server asks for one.
    with Client(live_url) as nobody, pytest.raises(UnauthorizedError):
        nobody.me()
