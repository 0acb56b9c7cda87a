"""The API docs (Swagger UI at /docs, ReDoc at /redoc) with the network blocked."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import PAGE_ONLY

pytestmark = [pytest.mark.browser, PAGE_ONLY]


def test_the_api_docs_work_without_the_internet(live_url: str, offline_page: Any) -> None:
    page = offline_page
    outside: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(live_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_this_server)
    page.goto(f"{live_url}/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/api/v1/tasks']")
    assert "labelloop" in (page.text_content(".swagger-ui .title") or "")

    page.goto(f"{live_url}/redoc")
    page.wait_for_selector("h1:has-text('labelloop')")
    page.get_by_text("/api/v1/tasks/{task_id}/annotations").first.wait_for()
    assert outside == [], f"the docs asked for assets from elsewhere: {outside}"

    # The dashboard's link leads there.
    page.goto(f"{live_url}/ui/")
    page.click("text=API docs")
    page.wait_for_selector(".swagger-ui .opblock")
    assert outside == []
