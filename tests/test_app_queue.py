"""Gradio's queue in the real app: a full queue refuses new jobs, and a job cancelled while it
waits in the queue is recorded as cancelled (ui/cancels.py).

A real ``python app.py`` with LIPSYNC_MAX_JOBS=1 and LIPSYNC_QUEUE_SIZE=2, the real
gradio_client, the weights-free ``baseline`` generator, real ffmpeg and a real SQLite history.
The browser's Cancel button posts the same /gradio_api/cancel request (event id, session,
fn index) as ``Job.cancel()``; the UI's event is driven here through its ``/generate`` name.
The running job and the cancelled ones share one client session: Gradio's own /cancel route
would cancel the session's running task too; the app's must not.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import QueueError

import media
from app_server import AppServer, start_app
from storage.jobs import JobStore

BASELINE = "baseline"
QUEUE_SIZE = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> AppServer:
    srv = start_app(tmp_path_factory.mktemp("app_queue"), LIPSYNC_MAX_JOBS="1",
                    LIPSYNC_QUEUE_SIZE=str(QUEUE_SIZE))
    yield srv
    srv.stop()


def _waiting(server: AppServer) -> float:
    with urllib.request.urlopen(server.url + "metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    line = next(x for x in text.splitlines() if x.startswith('lipsync_queue_waiting{group="generation"}'))
    return float(line.split()[-1])


def _wait_for(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _new_jobs(store: JobStore, before: set[str]) -> list[dict[str, Any]]:
    return [j for j in store.list(limit=None) if j["id"] not in before]


def test_queued_cancels_are_recorded_and_a_full_queue_refuses(
        server: AppServer, client: Client, store: JobStore, face_mp4: Path, speech_wav: Path,
        synth_dir: Path) -> None:
    long_speech = media.write_wav(synth_dir / "speech_12s.wav", media.speech_like(12.0, seed=5))
    before = {j["id"] for j in store.list(limit=None)}
    running = client.submit(handle_file(str(face_mp4)), handle_file(str(long_speech)), BASELINE,
                            '{"batch_size": 8}', api_name="/lipsync")
    first = _wait_for(lambda: [j for j in _new_jobs(store, before) if j["status"] == "running"],
                      "the first job to start")[0]

    queued_api = client.submit(handle_file(str(face_mp4)), handle_file(str(speech_wav)), BASELINE,
                               '{"crf": 30}', api_name="/lipsync")
    queued_ui = client.submit({"video": handle_file(str(face_mp4)), "subtitles": None}, None,
                              handle_file(str(speech_wav)), BASELINE, 0, 0, 10, 0, 0, None, "pingpong",
                              18, "veryfast", api_name="/generate")
    _wait_for(lambda: _waiting(server) == QUEUE_SIZE, "two events waiting in the queue")

    refused = Client(server.url, verbose=False).submit(
        handle_file(str(face_mp4)), handle_file(str(speech_wav)), BASELINE, "{}", api_name="/lipsync")
    with pytest.raises(QueueError, match="Queue is full"):
        refused.result(timeout=30)

    queued_api.cancel()
    queued_ui.cancel()
    cancelled = _wait_for(lambda: len(c := [j for j in _new_jobs(store, before)
                                            if j["status"] == "cancelled"]) == 2 and c,
                          "both queued jobs to be recorded as cancelled", timeout=20)
    assert store.get(first["id"])["status"] == "running", "the queued jobs were cancelled, not run"
    _wait_for(lambda: queued_api.done() and queued_ui.done(), "the cancelled jobs' clients to stop", 10)
    assert _waiting(server) == 0
    by_source = {j["source"]: store.get(j["id"]) for j in cancelled}
    assert set(by_source) == {"api", "app"}
    for job in by_source.values():
        assert job["error_type"] == "Cancelled" and "queued" in job["error_message"]
        assert job["started_at"] is None and not job["stages"]
        assert {i["role"] for i in job["inputs"]} == {"video", "audio"}
        assert job["model_requested"] == BASELINE
    assert by_source["api"]["options"] == {"crf": 30}

    video, _, _, job_id = running.result(timeout=120)
    assert job_id == first["id"] and Path(video).is_file()
    assert store.get(job_id)["status"] == "succeeded"
    assert len(_new_jobs(store, before)) == 3, "the refused request must not be recorded"
