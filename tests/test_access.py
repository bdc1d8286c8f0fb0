"""Access control with ``LIPSYNC_AUTH`` on a real ``python app.py`` server.

Without credentials every page's config, every API endpoint (/lipsync, /score, /history,
/job), uploads, file downloads and /metrics are refused; with them they work. /healthz and
/readyz stay open: orchestrator probes cannot log in and they carry no job data. Job files
are served only from ``<data_dir>/jobs/<job id>/``: the job database and anything reached
by a client-supplied path outside the job folders are refused even after login.
Baseline generator (no weights can exist here), real ffmpeg and SQLite. The other side, what
the README warns of (without ``LIPSYNC_AUTH`` anyone lists the jobs and downloads their videos),
runs on test_app_api.py's server, which has no auth: see
``test_without_auth_anyone_can_list_jobs_and_download_videos``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from gradio_client import Client, handle_file

from app_server import AppServer, start_app

USER, PASSWORD = "reviewer", "s3cret-pw"
API_NAMES = ("lipsync", "score", "history", "job")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> AppServer:
    srv = start_app(tmp_path_factory.mktemp("access_app"), LIPSYNC_AUTH=f"{USER}:{PASSWORD}")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def anon(server: AppServer) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def session(server: AppServer) -> httpx.Client:
    """An HTTP client logged in through Gradio's login form (cookie)."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        resp = c.post("login", data={"username": USER, "password": PASSWORD})
        assert resp.status_code == 200, resp.text
        yield c


@pytest.fixture(scope="module")
def done_job(server: AppServer, face_mp4: Path, speech_wav: Path) -> tuple[Any, ...]:
    client = Client(server.url, auth=(USER, PASSWORD), verbose=False)
    return client.predict(handle_file(str(face_mp4)), handle_file(str(speech_wav)), "baseline", "{}",
                          api_name="/lipsync")


def test_gradio_client_without_credentials_is_refused(server: AppServer) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - gradio_client's own error class varies
        Client(server.url, verbose=False)
    assert "401" in str(info.value) or "auth" in str(info.value).lower() or "login" in str(info.value).lower()


@pytest.mark.parametrize("path", ["config", "gradio_api/info", "gradio_api/openapi.json",
                                  "gradio_api/upload_progress?upload_id=x"])
def test_app_config_and_api_info_need_login(anon: httpx.Client, session: httpx.Client, path: str) -> None:
    assert anon.get(path).status_code in (401, 403)
    assert session.get(path).status_code in (200, 404)  # 404: a route this Gradio build lacks


def test_front_page_without_login_is_the_login_form(anon: httpx.Client, session: httpx.Client) -> None:
    page = anon.get("")
    assert page.status_code == 200 and '"auth_required":true' in page.text
    assert "log in to review jobs" in page.text.lower()
    # none of the app's components or tabs: only the login form (Gradio 6 does inline the API
    # schema, window.gradio_api_info, on this page: endpoint names and parameters, no data)
    assert "Generate" not in page.text and "History" not in page.text and "Job id" not in page.text
    assert session.get("config").json()["mode"] == "blocks"


@pytest.mark.parametrize("api_name", API_NAMES)
def test_every_api_endpoint_needs_login(anon: httpx.Client, api_name: str) -> None:
    for path in (f"gradio_api/call/{api_name}", f"gradio_api/call/v2/{api_name}", f"gradio_api/run/{api_name}"):
        resp = anon.post(path, json={"data": []})
        assert resp.status_code in (401, 403), (path, resp.status_code, resp.text[:200])
    resp = anon.post("gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x",
                                                     "event_data": None, "trigger_id": None})
    assert resp.status_code in (401, 403)
    assert anon.post("gradio_api/upload", files={"files": ("a.mp4", b"x")}).status_code in (401, 403)


def test_with_credentials_every_endpoint_works(server: AppServer, done_job: tuple[Any, ...],
                                               face_mp4: Path) -> None:
    client = Client(server.url, auth=(USER, PASSWORD), verbose=False)
    video, _sbs, _scores, job_id = done_job
    assert Path(video).stat().st_size > 0
    record = client.predict(job_id, api_name="/job")
    assert record["status"] == "succeeded" and record["user"] == USER
    rows = client.predict("all", "all", "", "", "", 10, api_name="/history")
    assert [r["id"] for r in rows] == [job_id]
    scores = client.predict(handle_file(str(face_mp4)), handle_file(video), None, api_name="/score")
    assert scores["scores"]["ssim_full"]["value"] > 0


def test_job_files_need_login_and_only_job_folders_are_served(server: AppServer, anon: httpx.Client,
                                                              session: httpx.Client,
                                                              done_job: tuple[Any, ...]) -> None:
    job_id = done_job[3]
    data = server.data_dir.resolve()
    result = data / "jobs" / job_id / "result.mp4"
    assert result.is_file()
    url = f"gradio_api/file={result}"
    assert anon.get(url).status_code in (401, 403)
    got = session.get(url)
    assert got.status_code == 200 and got.content == result.read_bytes()
    served_copy = f"gradio_api/file={done_job[0]}"  # Gradio's cache copy handed to the client
    assert anon.get(served_copy).status_code in (401, 403)
    assert session.get(served_copy).status_code == 200
    for path in (data / "jobs.db", f"{data}/jobs/../jobs.db", f"{data}/jobs/{job_id}/../../jobs.db",
                 "/etc/passwd", f"{data}/jobs/%2e%2e/jobs.db", server.log_path):
        resp = session.get(f"gradio_api/file={path}")
        assert resp.status_code in (403, 404), (path, resp.status_code)
        assert b"SQLite format" not in resp.content


def test_metrics_need_login_probes_stay_open(anon: httpx.Client, done_job: tuple[Any, ...]) -> None:
    assert anon.get("healthz").json() == {"status": "ok"}
    assert anon.get("readyz").status_code == 200
    refused = anon.get("metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert anon.get("metrics", auth=(USER, "wrong")).status_code == 401
    ok = anon.get("metrics", auth=(USER, PASSWORD))
    assert ok.status_code == 200
    jobs = {s.labels["status"]: s.value for family in text_string_to_metric_families(ok.text)
            if family.name == "lipsync_jobs" for s in family.samples}
    assert jobs["succeeded"] == 1
