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


def _page(tmp_path: Path, extra_flags: list[str]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=[*FLAGS, *extra_flags],
            viewport={"width": 1280, "height": 900},
        )
        try:
            pg = context.new_page()
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            context.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """A page in a fresh Chromium profile; Debian's browser, never a downloaded one."""
    yield from _page(tmp_path, [])


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
