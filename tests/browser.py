"""Debian's headless Chromium through Playwright, for the browser tests (no browser download)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless Chromium (skips the test where it or Playwright is absent)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu",
                                           "--autoplay-policy=no-user-gesture-required"])
        try:
            yield browser
        finally:
            browser.close()


def fill_generate_tab(page: Any, face: Path, speech: Path, model: str) -> None:
    """Upload ``face`` and ``speech`` in the Generate tab and pick ``model`` (page loaded)."""
    page.locator("#face-video input[type=file]").set_input_files(str(face))
    page.locator("#speech-audio input[type=file]").set_input_files(str(speech))
    page.wait_for_selector("#face-video video", timeout=30_000)
    page.wait_for_selector("#speech-audio audio, #speech-audio .waveform-container, #speech-audio wave",
                           state="attached", timeout=30_000)
    page.locator("#model input").click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(model)}")).click()
