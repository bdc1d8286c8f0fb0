"""The app in a real browser: headless Debian Chromium driven by Playwright, real server.

Uploads a face video and a speech file, runs a job with the weights-free baseline
generator, waits for a playable result video, then finds the job in the History tab.
Screenshots are saved in the test's tmp folder; any browser console error fails the test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app_server import AppServer, start_app
from browser import chromium, fill_generate_tab

JOB_TIMEOUT_MS = 180_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> AppServer:
    srv = start_app(tmp_path_factory.mktemp("app_browser"))
    yield srv
    srv.stop()


@pytest.fixture()
def browser_page():
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        yield page, errors


def test_generate_in_the_browser_then_find_it_in_history(server: AppServer, browser_page, tmp_path: Path,
                                                         face_mp4: Path, speech_wav: Path) -> None:
    page, errors = browser_page
    page.goto(server.url, wait_until="networkidle")
    page.wait_for_selector("#generate-btn")
    page.screenshot(path=tmp_path / "1_loaded.png", full_page=True)

    fill_generate_tab(page, face_mp4, speech_wav, "baseline")
    page.screenshot(path=tmp_path / "2_inputs.png", full_page=True)

    page.locator("#generate-btn").click()
    page.wait_for_function(
        """() => { const v = document.querySelector('#result-video video');
                   return v && v.src && v.readyState >= 1 && v.duration > 0; }""",
        timeout=JOB_TIMEOUT_MS)
    duration = page.evaluate("document.querySelector('#result-video video').duration")
    assert duration == pytest.approx(3.0, abs=0.2)  # the speech is 3.0 s
    job_id = page.locator("#job-id textarea, #job-id input").first.input_value()
    assert re.fullmatch(r"[0-9]{8}-[0-9]{9}-[0-9a-z]{8}", job_id)
    page.wait_for_selector("#side-by-side-video video")
    assert page.locator("#scores").get_by_text("psnr_full").count() >= 1
    page.screenshot(path=tmp_path / "3_result.png", full_page=True)

    page.get_by_role("tab", name="History").click()
    row_cell = page.locator("#history-table").get_by_text(job_id).filter(visible=True).first
    row_cell.wait_for(timeout=30_000)
    row_cell.click()
    page.locator("#history-details").get_by_text("succeeded").first.wait_for(timeout=30_000)
    page.screenshot(path=tmp_path / "4_history.png", full_page=True)

    page.get_by_role("tab", name="Performance").click()
    page.get_by_text(re.compile(r"^1 jobs ·")).first.wait_for(timeout=30_000)
    page.screenshot(path=tmp_path / "5_performance.png", full_page=True)
    page.get_by_role("tab", name="System").click()
    page.get_by_text("dlib 68-point predictor").filter(visible=True).first.wait_for(timeout=30_000)
    page.screenshot(path=tmp_path / "6_system.png", full_page=True)

    assert not errors, errors
