"""Headless Chromium for the review page's tests: Debian's ``chromium`` driven by Python ``playwright`` (nothing is
downloaded). Without Chromium (or playwright) a browser test is skipped, unless ``CI`` is set: then it fails."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Any]:
    """A launched Chromium (a playwright ``Browser``), closed afterwards."""
    executable = shutil.which("chromium")
    if executable is None:
        _unavailable("no `chromium` on PATH: install it with `apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the `playwright` package is not installed (requirements-dev.txt)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """One browser page in a context of its own (its own cookies), with what it logged as errors and every URL it
    requested."""

    page: Any
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


@contextmanager
def open_tab(browser: Any, extra_headers: Mapping[str, str] | None = None) -> Iterator[Tab]:
    """A fresh browser context and page; ``extra_headers`` go with every request it makes."""
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000}, extra_http_headers=dict(extra_headers or {})
    )
    tab = Tab(context.new_page())
    tab.page.set_default_timeout(TIMEOUT_MS)
    tab.page.on("console", lambda msg: tab.errors.append(msg.text) if msg.type == "error" else None)
    tab.page.on("pageerror", lambda exc: tab.errors.append(f"page error: {exc}"))
    tab.page.on("request", lambda req: tab.urls.append(req.url))
    try:
        yield tab
    finally:
        context.close()
