"""Debian's headless Chromium through Playwright, for the browser tests (no browser download)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from required import skip_or_fail

CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless Chromium (where it or Playwright is absent: a skip, a failure under
    ``make test``, see tests/required.py)."""
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError as exc:
        skip_or_fail(f"Playwright is not installed (requirements-dev.txt): {exc}")
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
