"""The review tool under ``LIPSYNC_AUTH`` on a real ``python app.py`` server: without login
/suite_run, /suite_results, /review_next, /review_submit and /leaderboard are refused and no
rating is written; with login the rating is kept under the signed-in user's name, whatever
reviewer name the request carries. Weights-free baseline and passthrough, real SQLite."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
from gradio_client import Client, handle_file

from app_server import AppServer, app_fixture
from suite_media import face_clip, write_suite

USER, PASSWORD = "reviewer", "s3cret-pw"
API_NAMES = ("suite_run", "suite_results", "review_next", "review_submit", "leaderboard")

pytestmark = pytest.mark.slow


server = app_fixture("review_access", LIPSYNC_AUTH=f"{USER}:{PASSWORD}")


@pytest.fixture(scope="module")
def authed(server: AppServer, tmp_path_factory: pytest.TempPathFactory) -> Client:
    client = Client(server.url, auth=(USER, PASSWORD), verbose=False)
    d = tmp_path_factory.mktemp("access_clips")
    files = face_clip(d, "one", 1) + [write_suite(d, ["one"], name="access")]
    run = client.predict([handle_file(str(f)) for f in files], "", "", "", False, api_name="/suite_run")
    assert run["status"] == "finished" and run["summary"][0]["failed"] == 0
    return client


def _ratings(server: AppServer) -> list[tuple]:
    with sqlite3.connect(server.db_path) as db:
        return db.execute("SELECT reviewer, sync, quality FROM ratings").fetchall()


@pytest.mark.parametrize("api_name", API_NAMES)
def test_review_endpoints_need_login(server: AppServer, authed: Client, api_name: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        for path in (f"gradio_api/call/{api_name}", f"gradio_api/run/{api_name}"):
            resp = anon.post(path, json={"data": ["x", "A", "B", None, None, "", "mallory"]})
            assert resp.status_code in (401, 403), (path, resp.status_code, resp.text[:200])
    assert _ratings(server) == []


def test_rating_without_login_is_refused_and_with_login_kept_under_the_user(server: AppServer,
                                                                             authed: Client) -> None:
    payload, _a, _b = authed.predict("someone-else", api_name="/review_next")
    with httpx.Client(base_url=server.url, timeout=30) as anon:  # the pair id alone is not enough
        resp = anon.post("gradio_api/call/review_submit",
                         json={"data": [payload["pair_id"], "A", "B", None, None, "", "mallory"]})
        assert resp.status_code in (401, 403)
    assert _ratings(server) == []
    authed.predict(payload["pair_id"], "A", "tie", None, None, "", "someone-else", api_name="/review_submit")
    assert _ratings(server) == [(USER, "a", "tie")]
    board = authed.predict(api_name="/leaderboard")
    assert board["reviewers"] == [{"reviewer": USER, "ratings": 1}]
    with sqlite3.connect(server.db_path) as db:
        assert db.execute("SELECT DISTINCT user FROM jobs").fetchall() == [(USER,)]
