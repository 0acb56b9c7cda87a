"""Headless Debian Chromium driven by Playwright (the live server is in tests/conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

#: For a browser test whose subject is the page itself (keys, clicks, what a screen shows): it runs
#: on SQLite only, since what it asks of the store the API tests check on SQLite and PostgreSQL
#: alike. Browser tests whose flow rests on the store (two people at once, a failed import rolled
#: back, tokens, exports, training until the model takes over) keep running on both.
PAGE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="package")
def driver() -> Iterator[Any]:
    """One Playwright driver for the browser tests (starting it is a process of its own)."""
    from playwright.sync_api import sync_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        yield pw


def _launch(driver: Any, extra_flags: list[str]) -> Any:
    return driver.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=[*FLAGS, *extra_flags]
    )


@pytest.fixture(scope="package")
def chromium(driver: Any) -> Iterator[Any]:
    """One Chromium for the browser tests; each test's pages live in contexts of their own."""
    browser = _launch(driver, [])
    try:
        yield browser
    finally:
        browser.close()


def _pages(browser: Any, n: int = 1) -> Iterator[list[Any]]:
    """``n`` pages, each in a fresh browser context of its own (as on n people's computers: no
    cookie, storage or cache shared with another page or an earlier test)."""
    contexts = [
        browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        for _ in range(n)
    ]
    try:
        pages = [context.new_page() for context in contexts]
        for pg in pages:
            pg.set_default_timeout(30_000)
        yield pages
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A page in a fresh browser context; Debian's browser, never a downloaded one."""
    for pages in _pages(chromium):
        yield pages[0]


@pytest.fixture
def two_pages(chromium: Any) -> Iterator[list[Any]]:
    """Two pages in two browser contexts: two people."""
    yield from _pages(chromium, 2)


@pytest.fixture
def offline_page(driver: Any) -> Iterator[Any]:
    """A page whose browser resolves no host name but the loopback: as on a server offline."""
    browser = _launch(driver, ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
    try:
        for pages in _pages(browser):
            yield pages[0]
    finally:
        browser.close()


def on_screen(page: Any) -> int:
    """The id of the item whose content the labelling page shows (it takes choices for that one)."""
    page.wait_for_selector("[data-testid=stage][data-item]")
    return int(page.get_attribute("[data-testid=stage]", "data-item"))


def wait_for_next(page: Any, item: int) -> int:
    """Wait until another item than ``item`` is on screen; returns its id."""
    page.wait_for_function(
        "(item) => { const d = document.querySelector('[data-testid=stage]').dataset.item;"
        " return d !== undefined && d !== String(item); }",
        arg=item,
    )
    return on_screen(page)
