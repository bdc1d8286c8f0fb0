"""Faults on a real ``python app.py`` (issue 7): SIGKILL mid-job, a full data folder, a timeout.

Real processes, real ffmpeg, real SQLite files, the baseline generator (no weights can
exist here), the dlib tracker, tiny synthetic media.

- SIGKILL during a job, then a restart on the same data folder: the history passes
  ``PRAGMA integrity_check``, the killed job is marked interrupted by the new process's start
  (before any request), and the job's ``lipsync-job-*`` temp folder (under the dead process's
  ``<data_dir>/work/<owner>/``) is deleted at start; the next job succeeds.
- A full data folder: tests run as root, which ignores file modes, so a read-only chmod
  cannot fail here. Instead the server's RLIMIT_FSIZE is lowered with prlimit (root is not
  exempt): every write past 1 KiB in any file fails with EFBIG, which SQLite reports as
  "database or disk is full", exactly as on a full disk. The request gets a clear
  StorageUnavailable error, /readyz answers 503 naming the database, the process lives on,
  and once the limit is lifted /readyz is 200 and the next job succeeds.
- A job past ``LIPSYNC_JOB_TIMEOUT_S`` is stopped, recorded failed with JobTimeout, leaves
  no temp folder, and the next job succeeds (the generation lane is not wedged).
- The generation worker process is killed mid-job: that job fails with WorkerDied, the
  server serves on, and the next job runs on a fresh worker (tests/test_worker.py covers
  SIGSEGV, a hang past the time limit, and workers outliving a killed server).
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import media
from app_server import AppServer, start_app
from storage.db import integrity_check
from storage.migrations import open_db
from storage.jobs import JobStore
from jobs.workspace import WORK_FOLDER, clean_stale_work_dirs, process_work_dir

BASELINE = "baseline"
JOB_TIMEOUT_S = 3.0  # the server's limit in the shared server; a short job's run takes < 1 s
LONG_AUDIO_S = 120.0  # a baseline job on it runs 6-40 s on 2 cores (fast and slow days): well past the limit
RESULT_TIMEOUT_S = 60.0
FSIZE_LIMIT = 1024  # bytes: any write past this offset in any file fails (EFBIG)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fault_media")
    return {"video": media.face_video(d / "face.mp4", seconds=0.4),
            "short": media.write_wav(d / "short.wav", media.speech_like(0.4)),
            "long": media.write_wav(d / "long.wav", media.speech_like(LONG_AUDIO_S))}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> AppServer:
    srv = start_app(tmp_path_factory.mktemp("fault_app"), LIPSYNC_JOB_TIMEOUT_S=str(JOB_TIMEOUT_S))
    yield srv
    srv.stop()


def _short_job(client: Client, inputs: dict[str, Path]) -> str:
    _video, _sbs, _scores, job_id = client.predict(
        handle_file(str(inputs["video"])), handle_file(str(inputs["short"])), BASELINE, "{}",
        api_name="/lipsync")
    return job_id


def _job_dirs(data_dir: Path) -> list[Path]:
    """Job temp folders under the process work folders (a worker's are one level deeper)."""
    return sorted((data_dir / WORK_FOLDER).glob("*/**/lipsync-job-*"))


def _workers(server: AppServer) -> list[psutil.Process]:
    """The server's generation worker processes (``python -m jobs.workers``)."""
    found = []
    for p in psutil.Process(server.process.pid).children():
        try:  # a killed idle worker stays a zombie until the pool next looks at it
            if p.status() != psutil.STATUS_ZOMBIE and "jobs.workers" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _integrity(db_path: Path) -> list[str]:
    db = open_db(db_path)
    try:
        return integrity_check(db)
    finally:
        db.close()


def _wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_sigkill_mid_job_then_restart(tmp_path: Path, inputs: dict[str, Path]) -> None:
    srv = start_app(tmp_path)
    try:
        client = Client(srv.url, verbose=False)
        done_id = _short_job(client, inputs)
        client.submit(handle_file(str(inputs["video"])), handle_file(str(inputs["long"])),
                      BASELINE, "{}", api_name="/lipsync")
        with JobStore(srv.db_path, recover=False, retention=False) as store:
            _wait_for(lambda: _job_dirs(srv.data_dir) and
                      store.list(status="running", limit=None), "the long job to render")
            running = store.list(status="running", limit=None)
        assert len(running) == 1
        killed_id = running[0]["id"]
        # the job's scratch folder (a worker's job-*/ holding run()'s lipsync-job-*/): a worker
        # whose server is gone removes its own run folder as it stops, never the scratch one
        stale = [p.parent if p.parent.name.startswith("job-") else p for p in _job_dirs(srv.data_dir)]
        children = psutil.Process(srv.process.pid).children(recursive=True)
        srv.process.send_signal(signal.SIGKILL)
        srv.process.wait(timeout=10)
        # its ffmpeg children see their pipes close and exit; end any that linger
        _gone, alive = psutil.wait_procs(children, timeout=10)
        for proc in alive:
            proc.kill()
    finally:
        srv.stop()
    assert srv.process.returncode == -signal.SIGKILL
    assert stale and all(p.is_dir() for p in stale), "the killed job's temp folder should be left over"
    with JobStore(srv.db_path, recover=False, retention=False) as store:
        assert store.get(killed_id)["status"] == "running"  # nothing ran recover yet

    restarted = start_app(tmp_path)  # same data folder
    try:
        # before any request: make_context at start has recovered the job and cleaned up
        with JobStore(restarted.db_path, recover=False, retention=False) as store:
            killed = store.get(killed_id)
            done = store.get(done_id)
        assert killed["status"] == "interrupted", killed
        assert killed["error_type"] == "Interrupted" and f"pid {srv.process.pid}" in killed["error_message"]
        assert done["status"] == "succeeded" and Path(done["output_path"]).is_file()
        assert not any(p.exists() for p in stale), f"stale temp folders left: {stale}"
        owners = [p.name for p in (restarted.data_dir / WORK_FOLDER).iterdir()]
        assert owners == [f for f in owners if f"_{restarted.process.pid}_" in f] and len(owners) == 1
        assert _integrity(restarted.db_path) == ["ok"]
        assert "marked interrupted" in restarted.log_tail(20000)

        next_id = _short_job(Client(restarted.url, verbose=False), inputs)
        with JobStore(restarted.db_path, recover=False, retention=False) as store:
            assert store.get(next_id)["status"] == "succeeded"
            assert {j["id"] for j in store.list(limit=None)} == {done_id, killed_id, next_id}
        assert _job_dirs(restarted.data_dir) == []
    finally:
        restarted.stop()


def _upload(http: httpx.Client, *paths: Path) -> list[dict[str, Any]]:
    """Upload through Gradio's own upload route; FileData payloads for /gradio_api/call."""
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    resp = http.post("gradio_api/upload", files=files)
    resp.raise_for_status()
    return [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in resp.json()]


def _call_lipsync(http: httpx.Client, data: list[Any]) -> tuple[str, str]:
    """(event, data) of the final SSE message of one /lipsync call over Gradio's REST API."""
    resp = http.post("gradio_api/call/lipsync", json={"data": data})
    resp.raise_for_status()
    event_id = resp.json()["event_id"]
    event, payload = "", ""
    with http.stream("GET", f"gradio_api/call/lipsync/{event_id}", timeout=RESULT_TIMEOUT_S) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                payload = line.partition(":")[2].strip()
                if event in ("complete", "error"):
                    break
    return event, payload


def _set_fsize(pid: int, soft: int) -> None:
    """The soft file-size limit of process ``pid`` (the hard limit stays: raising it back
    would need CAP_SYS_RESOURCE)."""
    proc = psutil.Process(pid)
    proc.rlimit(psutil.RLIMIT_FSIZE, (soft, proc.rlimit(psutil.RLIMIT_FSIZE)[1]))


def test_full_data_folder_gives_clear_error_and_readyz_503(server: AppServer, client: Client,
                                                           store: JobStore,
                                                           inputs: dict[str, Path]) -> None:
    _short_job(client, inputs)
    before = len(store.list(limit=None))
    pid = server.process.pid
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("readyz").status_code == 200
        data = [*_upload(http, inputs["video"], inputs["short"]), BASELINE, "{}"]
        with sqlite3.connect(server.db_path) as con:  # the next write starts the WAL at offset 0
            assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        hard = psutil.Process(pid).rlimit(psutil.RLIMIT_FSIZE)[1]
        _set_fsize(pid, FSIZE_LIMIT)
        try:
            event, payload = _call_lipsync(http, data)
            ready = http.get("readyz")
        finally:
            _set_fsize(pid, hard)
        assert server.process.poll() is None, server.log_tail()
        assert event == "error", (event, payload)
        body = json.loads(payload)
        message = body["error"] if isinstance(body, dict) else str(body)
        assert message.startswith("StorageUnavailable: cannot use the job database"), message
        assert "jobs.db" in message and "disk may be full" in message, message
        assert str(server.db_path.parent) not in message, message  # no absolute path
        assert "Traceback" not in message
        assert ready.status_code == 503
        check = ready.json()["checks"]["database"]
        assert not check["ok"] and "job database" in check["detail"], check
        assert str(server.db_path.parent) not in check["detail"], check  # unauthenticated: no path
        assert "File too large" in check["detail"], check

        assert http.get("readyz").status_code == 200  # the limit is lifted: ready again
    assert len(store.list(limit=None)) == before  # the refused job left no half-written row
    assert store.get(_short_job(client, inputs))["status"] == "succeeded"
    assert _integrity(server.db_path) == ["ok"]


def test_job_past_time_limit_is_stopped_and_lane_stays_free(server: AppServer, client: Client,
                                                            store: JobStore,
                                                            inputs: dict[str, Path]) -> None:
    _short_job(client, inputs)  # warm: tracker and audio front end loaded
    job = client.submit(handle_file(str(inputs["video"])), handle_file(str(inputs["long"])),
                        BASELINE, "{}", api_name="/lipsync")
    t0 = time.monotonic()
    with pytest.raises(AppError) as info:
        job.result(timeout=RESULT_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    assert "JobTimeout" in str(info.value) and "time limit" in str(info.value)
    assert elapsed < JOB_TIMEOUT_S + 10, f"the timeout took {elapsed:.1f} s to stop the job"
    failed = store.list(status="failed", limit=None)
    assert len(failed) == 1 and failed[0]["error_type"] == "JobTimeout", failed
    assert _job_dirs(server.data_dir) == []
    next_id = _short_job(client, inputs)
    assert store.get(next_id)["status"] == "succeeded"


def test_generation_worker_killed_mid_job(server: AppServer, client: Client, store: JobStore,
                                         inputs: dict[str, Path]) -> None:
    """Fault (1): the worker process running a job is killed (as a crash in native code would
    end it): that job is recorded failed with the reason, the server lives on, its temp
    folder goes, and the next job succeeds on a fresh worker."""
    _short_job(client, inputs)
    before = {p.pid for p in _workers(server)}
    assert len(before) == 2, "the app starts LIPSYNC_MAX_JOBS generation workers"
    job = client.submit(handle_file(str(inputs["video"])), handle_file(str(inputs["long"])),
                        BASELINE, "{}", api_name="/lipsync")
    _wait_for(lambda: _job_dirs(server.data_dir), "the long job to start rendering in a worker")
    for proc in _workers(server):
        proc.send_signal(signal.SIGKILL)
    with pytest.raises(AppError) as info:
        job.result(timeout=RESULT_TIMEOUT_S)
    assert "WorkerDied" in str(info.value) and "SIGKILL" in str(info.value)
    failed = [j for j in store.list(status="failed", limit=None) if j["error_type"] == "WorkerDied"]
    assert len(failed) == 1 and "killed by SIGKILL" in failed[0]["error_message"], failed
    assert server.process.poll() is None
    assert _job_dirs(server.data_dir) == []
    assert store.get(_short_job(client, inputs))["status"] == "succeeded"
    assert not before & {p.pid for p in _workers(server)}  # served by a new worker


def test_clean_stale_work_dirs_deletes_only_dead_owners(tmp_path: Path) -> None:
    """The start-up cleanup alone: a dead process's folder goes; this process's, another
    host's and a folder not named after an owner stay."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    create_time = psutil.Process(child.pid).create_time()
    child.kill()
    child.wait(timeout=10)
    root = tmp_path / WORK_FOLDER
    dead = root / f"{socket.gethostname()}_{child.pid}_{create_time:.3f}"
    (dead / "lipsync-job-x").mkdir(parents=True)
    live = process_work_dir(tmp_path)
    (live / "lipsync-job-y").mkdir()
    other_host = root / f"elsewhere_{child.pid}_{create_time:.3f}"
    foreign = root / "notes"
    for d in (other_host, foreign):
        d.mkdir()
    assert clean_stale_work_dirs(tmp_path) == [dead]
    assert not dead.exists()
    assert all(d.is_dir() for d in (live / "lipsync-job-y", other_host, foreign))
