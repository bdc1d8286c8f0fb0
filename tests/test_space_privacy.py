"""Visitors' privacy on a public Space: a real ``python app.py`` with ``SPACE_ID`` set, no login.

Two ``gradio_client`` sessions, then two real browser contexts (Debian's headless Chromium
through Playwright), each make a job and see only their own: in /history and the History
tab, while /job with the other's id and a direct fetch of the other's result file are
refused. The server runs the ``zerogpu`` executor with the ``spaces`` package installed and
no ZeroGPU hardware, where ``spaces.GPU`` is a no-op: the whole app must work that way.
Passthrough model (no weights can exist here), real ffmpeg and SQLite.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client, handle_file

from app_server import AppServer, start_app
from browser import chromium, fill_generate_tab

JOB_TIMEOUT_MS = 180_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> AppServer:
    pytest.importorskip("spaces", reason="install requirements-dev.txt (spaces)")
    srv = start_app(tmp_path_factory.mktemp("space_app"), SPACE_ID="lipsync/test-space",
                    LIPSYNC_EXECUTOR="zerogpu", LIPSYNC_TEST_PERSISTENT_ROOT="/nonexistent")
    yield srv
    srv.stop()


def _lipsync(client: Client, face: Path, speech: Path) -> tuple[Any, ...]:
    return client.predict(handle_file(str(face)), handle_file(str(speech)), "passthrough", "{}",
                          api_name="/lipsync")


def _history_ids(client: Client) -> set[str]:
    rows = client.predict("all", "all", "", "", "", 0, api_name="/history")
    return {r["id"] for r in rows}


def test_two_api_sessions_see_only_their_own_jobs(server: AppServer, face_mp4: Path, speech_wav: Path) -> None:
    a, b = Client(server.url, verbose=False), Client(server.url, verbose=False)
    video_a, _, scores_a, job_a = _lipsync(a, face_mp4, speech_wav)
    _, _, _, job_b = _lipsync(b, face_mp4, speech_wav)
    assert Path(video_a).stat().st_size > 1000  # the owner gets the result (a cache copy)
    assert scores_a["scores"]["psnr_full"]["value"] is not None  # scored outside the window
    assert "asking a ZeroGPU window" in server.log_tail(40000)  # the zerogpu executor ran it

    assert _history_ids(a) == {job_a} and _history_ids(b) == {job_b}
    assert a.predict(job_a, api_name="/job")["status"] == "succeeded"
    with pytest.raises(Exception, match="another visitor's session"):
        a.predict(job_b, api_name="/job")
    with pytest.raises(Exception, match="another visitor's session"):
        b.predict(job_a, api_name="/job")

    # the other's result by its path on the server: refused (owners get cache copies instead)
    path_b = server.data_dir / "jobs" / job_b / "result.mp4"
    assert path_b.is_file()
    url = server.url + "gradio_api/file=" + urllib.parse.quote(str(path_b.resolve()))
    assert httpx.get(url, timeout=30).status_code == 403


@pytest.fixture()
def browser():
    with chromium() as b:
        yield b


def _generate_in(page: Any, url: str, face: Path, speech: Path) -> str:
    page.goto(url, wait_until="networkidle")
    page.wait_for_selector("#generate-btn")
    fill_generate_tab(page, face, speech, "passthrough")
    page.locator("#generate-btn").click()
    job = page.locator("#job-id textarea, #job-id input").first
    page.wait_for_function(
        """() => { const e = document.querySelector('#job-id textarea, #job-id input');
                   return e && /^[0-9]{8}-[0-9]{9}-[0-9a-z]{8}$/.test(e.value); }""", timeout=JOB_TIMEOUT_MS)
    return job.input_value()


def _history_text(page: Any, own: str) -> str:
    page.get_by_role("tab", name="History").click()
    page.locator("#history-table").get_by_text(own).filter(visible=True).first.wait_for(timeout=30_000)
    return page.locator("#history-table").inner_text()


def test_two_browsers_see_only_their_own_jobs(server: AppServer, browser: Any, face_mp4: Path,
                                              speech_wav: Path, tmp_path: Path) -> None:
    pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page() for _ in range(2)]
    errors: list[str] = []
    for page in pages:
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    job_a = _generate_in(pages[0], server.url, face_mp4, speech_wav)
    job_b = _generate_in(pages[1], server.url, face_mp4, speech_wav)
    assert job_a != job_b
    seen_a, seen_b = _history_text(pages[0], job_a), _history_text(pages[1], job_b)
    pages[0].screenshot(path=tmp_path / "history_a.png", full_page=True)
    assert job_a in seen_a and job_b not in seen_a
    assert job_b in seen_b and job_a not in seen_b
    # typing the other's id in the History tab is refused with a clear error
    pages[0].locator("#history-job-id textarea, #history-job-id input").first.fill(job_b)
    pages[0].get_by_role("button", name="Show job").click()
    pages[0].get_by_text("another visitor's session").first.wait_for(timeout=30_000)
    assert errors == []


def test_suites_and_blind_review_are_for_reviewers_on_a_public_space(server: AppServer) -> None:
    """A suite's results and the review pairs show every visitor's results: on a public Space an
    anonymous visitor is refused them (the leaderboard's aggregates stay open)."""
    visitor = Client(server.url, verbose=False)
    with pytest.raises(Exception, match="for reviewers"):
        visitor.predict("ann", api_name="/review_next")
    with pytest.raises(Exception, match="for reviewers"):
        visitor.predict("20260101-000000000-aaaaaaaa", api_name="/suite_results")
    with pytest.raises(Exception, match="for reviewers"):
        visitor.predict([], "", "", "", True, api_name="/suite_run")
    board = visitor.predict(api_name="/leaderboard")
    assert board["ratings"] == 0
