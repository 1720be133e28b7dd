"""Debian's Chromium driven by Playwright, for the tests that open a page in a real browser.

Never ``playwright install``: it downloads browsers; the system's ``chromium`` is used instead.
"""

from __future__ import annotations

import os
import shutil
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


def chromium_driver() -> Any:
    """Playwright's sync API, with the system's Chromium there to drive; skips without them,
    but fails under CI, where .ci/run installs Chromium and `make install` playwright."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[dev]')"
    if reason is None and shutil.which("chromium") is None:
        reason = "Chromium is not installed (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser tests need a browser under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return sync_playwright
