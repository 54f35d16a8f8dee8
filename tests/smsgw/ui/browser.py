"""A real browser for the dashboard's tests: Debian's Chromium driven by Playwright.

Chromium comes from ``SMSGW_TEST_CHROMIUM`` (a path), ``PATH`` or ``/usr/bin/chromium``
(``.ci/run`` installs Debian's ``chromium``); Playwright's own browser downloads are never
used (this machine reaches no CDN). Without Chromium the browser tests skip, except under
``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from playwright.async_api import Browser, async_playwright

from tests.pgtest import in_ci


def chromium_binary() -> str | None:
    explicit = os.environ.get("SMSGW_TEST_CHROMIUM")
    if explicit:
        return explicit
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        if in_ci():
            pytest.fail("CI=true but Chromium is missing (.ci/run installs Debian's chromium)")
        pytest.skip("no Chromium: install Debian's chromium or set SMSGW_TEST_CHROMIUM")
    async with async_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = await p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()
