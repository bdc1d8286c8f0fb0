"""The review tool on a real ``python app.py`` server: a suite uploaded through /suite_run
(real generation with the weights-free baseline and passthrough), /suite_results, blind pairs
from /review_next whose payload never names a setting, /review_submit refusals, /leaderboard,
and a rating round trip in headless Chromium (Playwright) with the keyboard shortcuts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client, handle_file

from app_server import AppServer, app_fixture
from suite_media import face_clip, write_suite
from test_app_browser import browser_page  # noqa: F401 - the fixture

SETTING_NAMES = ("baseline", "passthrough")

pytestmark = pytest.mark.slow


# The server's own limits, which a suite's jobs must run under (a 60 s job cap, 1000 px sides).
server = app_fixture("review_app", LIPSYNC_JOB_TIMEOUT_S="60", LIPSYNC_MAX_SIDE="1000")


@pytest.fixture(scope="module")
def run(client: Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two clips x (baseline, passthrough), uploaded with their suite file."""
    d = tmp_path_factory.mktemp("review_clips")
    files = face_clip(d, "one", 1) + face_clip(d, "two", 2) + [write_suite(d, ["one", "two"], name="app-tiny")]
    return client.predict([handle_file(str(f)) for f in files], "", "", "", False, api_name="/suite_run")


def _raw_call(server: AppServer, api_name: str, data: list[Any]) -> str:
    """The whole SSE answer of one call, as the wire carries it."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        event = http.post(f"gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
        return http.get(f"gradio_api/call/{api_name}/{event}").text


def test_suite_run_and_results_through_the_api(run: dict[str, Any], client: Client) -> None:
    assert run["suite"] == "app-tiny" and run["status"] == "finished"
    assert [s["setting"] for s in run["summary"]] == list(SETTING_NAMES)
    assert all(s["jobs"] == 2 and s["failed"] == 0 for s in run["summary"])
    assert sorted(run["grids"]) == ["one", "two"]
    again = client.predict(run["run_id"], api_name="/suite_results")
    assert again["run_id"] == run["run_id"] and again["summary"] == run["summary"]
    with pytest.raises(Exception, match="SuiteRunNotFound"):
        client.predict("20200101-000000000-zzzzzzzz", api_name="/suite_results")


def test_bad_suite_through_the_api_is_refused_before_any_job(client: Client, tmp_path: Path,
                                                             run: dict[str, Any]) -> None:
    before = client.predict("all", "all", "", "", "", 0, api_name="/history")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\npairs:\n  - video: one.mp4\n    audio: missing.wav\nsettings: [baseline]\n")
    with pytest.raises(Exception, match=r"SuiteError: bad.yaml, field one.video: .* does not exist"):
        client.predict([handle_file(str(bad))], "", "", "", False, api_name="/suite_run")
    with pytest.raises(Exception, match="must be inside the data folder"):
        client.predict([], "/etc", "baseline", "", False, api_name="/suite_run")
    assert client.predict("all", "all", "", "", "", 0, api_name="/history") == before


def test_suite_jobs_run_under_the_server_settings(server: AppServer, client: Client, tmp_path: Path,
                                                  run: dict[str, Any]) -> None:
    """Every job of an app suite is recorded with the server's job-timeout cap and size limit,
    and a setting with an option the generation API does not take (the encoder) is refused,
    naming it, before any job and without leaving the uploaded copies behind."""
    with sqlite3.connect(server.db_path) as db:
        rows = db.execute("SELECT j.options_json FROM suite_jobs s JOIN jobs j ON j.id = s.job_id "
                          "WHERE s.run_id = ?", (run["run_id"],)).fetchall()
    assert len(rows) == 4
    for (text,) in rows:
        options = json.loads(text)
        assert options["timeout_s"] == 60.0 and options["limits"]["max_side"] == 1000, options
    before = client.predict("all", "all", "", "", "", 0, api_name="/history")
    uploads = server.data_dir / "suites" / "uploads"
    kept = sorted(uploads.iterdir())  # the run fixture's upload
    files = face_clip(tmp_path, "three", 3)
    with pytest.raises(Exception, match=r"SuiteError: .*setting 'baseline encoder=libx264' is not valid: "
                                        r"unknown option\(s\) encoder"):
        client.predict([handle_file(str(f)) for f in files], "", "baseline encoder=libx264", "", False,
                       api_name="/suite_run")
    assert client.predict("all", "all", "", "", "", 0, api_name="/history") == before
    assert sorted(uploads.iterdir()) == kept and len(kept) == 1  # the refused upload's copies are gone


def test_review_next_payload_never_names_a_setting(server: AppServer, run: dict[str, Any]) -> None:
    wire = _raw_call(server, "review_next", ["wire-reader"])
    assert "pair_id" in wire and "result.mp4" in wire
    for name in SETTING_NAMES:
        assert name not in wire.lower(), name


def test_review_submit_refuses_unknown_forged_and_rated_pairs(server: AppServer, client: Client,
                                                              run: dict[str, Any]) -> None:
    payload, video_a, video_b = client.predict("carol", api_name="/review_next")
    assert Path(video_a).stat().st_size > 0 and Path(video_b).stat().st_size > 0
    pair_id = payload["pair_id"]
    token, sig = pair_id.split(".")
    before = client.predict(api_name="/leaderboard")["ratings"]
    for bad, error in ((f"{token}.{'f' * len(sig)}", "ForgedPair"), ("nonsense", "ForgedPair"),
                       (f"{'A' * 22}.{sig}", "ForgedPair")):
        with pytest.raises(Exception, match=error):
            client.predict(bad, "A", "B", None, None, "", "carol", api_name="/review_submit")
    with pytest.raises(Exception, match="UnknownPair"):  # carol's pair, submitted as dave
        client.predict(pair_id, "A", "B", None, None, "", "dave", api_name="/review_submit")
    assert client.predict(api_name="/leaderboard")["ratings"] == before
    assert client.predict(pair_id, "A", "B", 4, 2, "ok", "carol", api_name="/review_submit")["rating_id"] >= 1
    with pytest.raises(Exception, match="AlreadyRated"):
        client.predict(pair_id, "B", "B", None, None, "", "carol", api_name="/review_submit")
    board = client.predict(api_name="/leaderboard")
    assert board["ratings"] == before + 1
    assert {r["reviewer"] for r in board["reviewers"]} >= {"carol"}


def test_rating_round_trip_in_the_browser(server: AppServer, client: Client, run: dict[str, Any], browser_page,
                                          tmp_path: Path) -> None:
    page, errors = browser_page
    before = client.predict(api_name="/leaderboard")
    page.goto(server.url, wait_until="load", timeout=90_000)
    page.get_by_role("tab", name="Review").click(timeout=60_000)
    page.locator("#review-reviewer input, #review-reviewer textarea").first.fill("erin")
    page.locator("#review-next").click()
    page.wait_for_function("() => { const v = document.querySelector('#review-b video'); return v && v.src; }",
                           timeout=30_000)
    page.locator("#review-sync").get_by_text("A", exact=True).click()  # the mouse: A has the better lip sync
    page.locator("body").click(position={"x": 5, "y": 5})  # focus away from the radio
    page.keyboard.press("w")  # the keys: visual quality B, then submit
    page.keyboard.press("Enter")
    page.locator("#review-status").get_by_text("Rated.").wait_for(timeout=30_000)
    html = page.locator("#review-tab").inner_html()
    page.screenshot(path=tmp_path / "review.png", full_page=True)
    for name in SETTING_NAMES:
        assert name not in html.lower(), name
    after = client.predict(api_name="/leaderboard")
    assert after["ratings"] == before["ratings"] + 1
    assert {r["reviewer"]: r["ratings"] for r in after["reviewers"]}["erin"] == 1
    with sqlite3.connect(server.db_path) as db:  # the click and the key were the answers stored
        assert db.execute("SELECT sync, quality FROM ratings WHERE reviewer = 'erin'").fetchall() == [("a", "b")]
    page.get_by_role("tab", name="Leaderboard").click()
    page.locator("#leaderboard-count").get_by_text(f"{after['ratings']} ratings").wait_for(timeout=30_000)
    page.locator("#leaderboard-reviewers").get_by_text("erin").filter(visible=True).first.wait_for(timeout=30_000)
    page.screenshot(path=tmp_path / "leaderboard.png", full_page=True)
    assert sum(r["comparisons"] for r in after["sync"]) == 2 * after["ratings"]
    assert not errors, errors


def test_suites_tab_shows_a_run_with_its_grid(server: AppServer, run: dict[str, Any], browser_page,
                                              tmp_path: Path) -> None:
    page, errors = browser_page
    page.goto(server.url, wait_until="networkidle", timeout=90_000)  # no open stream keeps it busy
    page.get_by_role("tab", name="Suites").click()
    page.locator("#suite-run-id input, #suite-run-id textarea").first.fill(run["run_id"])
    page.get_by_role("button", name="Show run").click()
    summary = page.locator("#suite-summary")
    summary.get_by_text("passthrough").filter(visible=True).first.wait_for(timeout=30_000)
    page.wait_for_function("() => { const v = document.querySelector('#suite-grid video');"
                           " return v && v.src && v.readyState >= 1 && v.duration > 0; }", timeout=30_000)
    page.screenshot(path=tmp_path / "suites.png", full_page=True)
    assert summary.get_by_text("baseline", exact=True).filter(visible=True).count() == 2  # setting, model
    assert not errors, errors
