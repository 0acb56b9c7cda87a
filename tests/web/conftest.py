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


def _pages(tmp_path: Path, extra_flags: list[str], n: int = 1) -> Iterator[list[Any]]:
    """``n`` pages, each in a fresh Chromium profile of its own (as on n people's computers)."""
    from playwright.sync_api import sync_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        contexts = [
            pw.chromium.launch_persistent_context(
                str(tmp_path / ("profile" if k == 0 else f"profile-{k}")),
                executable_path=CHROMIUM,
                headless=True,
                args=[*FLAGS, *extra_flags],
                viewport={"width": 1280, "height": 900},
                accept_downloads=True,
            )
            for k in range(n)
        ]
        try:
            pages = [context.new_page() for context in contexts]
            for pg in pages:
                pg.set_default_timeout(30_000)
            yield pages
        finally:
            for context in contexts:
                context.close()


def _page(tmp_path: Path, extra_flags: list[str]) -> Iterator[Any]:
    for pages in _pages(tmp_path, extra_flags):
        yield pages[0]


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """A page in a fresh Chromium profile; Debian's browser, never a downloaded one."""
    yield from _page(tmp_path, [])


@pytest.fixture
def two_pages(tmp_path: Path) -> Iterator[list[Any]]:
    """Two pages in two browser profiles: two people."""
    yield from _pages(tmp_path, [], 2)


@pytest.fixture
def offline_page(tmp_path: Path) -> Iterator[Any]:
    """A page whose browser resolves no host name but the loopback: as on a server offline."""
    yield from _page(tmp_path, ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])


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
