"""A headless browser for tests: Debian's Chromium (``/usr/bin/chromium``, package ``chromium``) driven
by Playwright. Playwright never downloads a browser here: it is told the system browser's path, and
``scripts/test`` sets ``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1``. As root Chromium needs ``--no-sandbox``;
the background-networking flags keep it from calling home (the machine's network is closed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium"]

CHROMIUM = os.environ.get("EDU_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``) until the block ends.

    Raises:
        FileNotFoundError: the system browser is missing (``apt-get install chromium``; scripts/test
            installs it).
    """
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test installs it)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield browser
        finally:
            browser.close()
