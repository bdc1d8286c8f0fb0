"""storage.jobs.JobStore on real SQLite files: the job life cycle, 8 threads x 50 jobs at
once, concurrent first opens of a fresh file, and retention of job files."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlite_utils import Database

from storage.db import InvalidJobId, InvalidJobState, JobNotFound, integrity_check
from storage.jobs import JobStore
from storage.migrations import LATEST, MIGRATIONS_TABLE
from storage.records import TERMINAL

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)
MIB = 1024 * 1024


class FakeClock:
    """A settable clock for JobStore(clock=...)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    with JobStore(tmp_path / "jobs.db") as s:
        yield s


def test_life_cycle_records_everything_in_one_row(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    video = tmp_path / "face.mp4"
    video.write_bytes(b"not really a video")
    with JobStore(tmp_path / "jobs.db", clock=clock) as store:
        job_id = store.create(source="app", inputs={"video": video, "audio": {"path": "/x/a.wav", "probe": {"sr": 16000}}},
                              options={"fps": 25.0, "batch": 16}, model_requested="wav2lip", user="ann")
        assert store.get(job_id)["status"] == "queued"
        clock.now = T0 + timedelta(seconds=2)
        store.start(job_id)
        store.record_stages(job_id, {"probe": 0.25}, offsets={"probe": 0.0})
        store.record_stages(job_id, {"generate": 3.0, "encode": 1.5}, offsets={"generate": 0.5, "encode": 0.75})
        clock.now = T0 + timedelta(seconds=12)
        store.finish(job_id, model_used="baseline", model_reason="wav2lip weights unavailable",
                     outputs={"video": tmp_path / "out.mp4"}, facts={"duration_s": 4.0},
                     device={"device": "cpu", "cpu_model": "X", "cpu_count": 2, "peak_rss_mb": 512.5, "torch": "2.13"},
                     scores=[{"metric": "lse_d", "value": 7.25, "convention": {"fps": 25}},
                             {"metric": "lse_c", "value": None, "reason": "no SyncNet weights"}])
        job = store.get(job_id)
    assert job["status"] == "succeeded" and job["source"] == "app" and job["user"] == "ann"
    assert (job["queue_wait_s"], job["run_s"]) == (2.0, 10.0)
    assert job["created_at"] == "2025-05-01T12:00:00.000000+00:00"
    assert (job["model_requested"], job["model_used"], job["model_reason"]) == (
        "wav2lip", "baseline", "wav2lip weights unavailable")
    assert job["options"] == {"fps": 25.0, "batch": 16}
    assert job["output_path"] == str(tmp_path / "out.mp4")
    assert (job["output_duration_s"], job["gpu_seconds"]) == (4.0, 3.0)  # gpu = the generate stage
    assert [s["stage"] for s in job["stages"]] == ["probe", "generate", "encode"]
    by_role = {i["role"]: i for i in job["inputs"]}
    assert by_role["video"]["name"] == "face.mp4" and by_role["video"]["size_bytes"] == 18
    assert by_role["video"]["sha256"] == hashlib.sha256(b"not really a video").hexdigest()
    assert by_role["audio"]["probe"] == {"sr": 16000} and by_role["audio"]["sha256"] is None
    scores = {s["metric"]: s for s in job["scores"]}
    assert scores["lse_d"]["value"] == 7.25 and scores["lse_d"]["convention"] == {"fps": 25}
    assert scores["lse_c"]["value"] is None and scores["lse_c"]["reason"] == "no SyncNet weights"
    assert job["device"]["peak_rss_mb"] == 512.5 and job["device"]["torch"] == "2.13"


def test_sha256_of_an_input_is_the_file_digest(tmp_path: Path, store: JobStore) -> None:
    path = tmp_path / "voice.wav"
    path.write_bytes(os.urandom(3 * MIB + 7))  # more than one hash chunk
    job = store.get(store.create(source="cli", inputs={"audio": path}))
    assert job["inputs"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert job["inputs"][0]["size_bytes"] == 3 * MIB + 7


def test_state_changes_are_checked(store: JobStore) -> None:
    job_id = store.create(source="cli", inputs={"video": "/v.mp4"})
    with pytest.raises(InvalidJobState, match="cannot finish .* it is queued"):
        store.finish(job_id, model_used="baseline")
    store.cancel(job_id, "stopped by test")
    job = store.get(job_id)
    assert (job["status"], job["error_type"], job["error_message"]) == ("cancelled", "Cancelled", "stopped by test")
    for action in (lambda: store.start(job_id), lambda: store.fail(job_id, error_type="X", message="m"),
                   lambda: store.record_stages(job_id, {"probe": 1.0})):
        with pytest.raises(InvalidJobState, match="it is cancelled"):
            action()
    with pytest.raises(JobNotFound, match="no job with id"):
        store.get("20250101-000000000-aaaaaaaa")
    with pytest.raises(InvalidJobId):
        store.job_dir("../../etc")
    with pytest.raises(ValueError, match="source must be one of"):
        store.create(source="web", inputs={})


def test_scores_need_a_value_or_a_reason(store: JobStore) -> None:
    job_id = store.create(source="api", inputs={})
    store.start(job_id)
    with pytest.raises(ValueError, match="give the reason"):
        store.finish(job_id, model_used="baseline", scores=[{"metric": "psnr_full", "value": None}])
    assert store.get(job_id)["status"] == "running"  # the refused finish changed nothing
    store.finish(job_id, model_used="baseline", scores=[{"metric": "psnr_full", "value": float("inf")}])
    score = store.get(job_id)["scores"][0]
    assert score["value"] is None and "not a finite number" in score["reason"]


def test_failure_keeps_partial_stage_times(store: JobStore) -> None:
    job_id = store.create(source="cli", inputs={"video": "/v.mp4"})
    store.start(job_id)
    store.fail(job_id, error_type="NoFaceFound", message="no face in frames 0, 12, 24",
               stage_seconds={"probe": 0.1, "track": 2.0}, stage_offsets={"probe": 0.0, "track": 0.1})
    job = store.get(job_id)
    assert (job["status"], job["error_type"]) == ("failed", "NoFaceFound")
    assert {s["stage"]: s["seconds"] for s in job["stages"]} == {"probe": 0.1, "track": 2.0}
    assert job["finished_at"] is not None and job["run_s"] is not None


def test_in_memory_database_works_too() -> None:
    store = JobStore(Database(memory=True), recover=False)
    job_id = store.create(source="cli", inputs={"video": "/v.mp4"}, hash_inputs=False)
    store.start(job_id)
    store.finish(job_id, model_used="passthrough")
    assert len(store.list(limit=None, status="succeeded")) == 1


THREADS, JOBS_PER_THREAD = 8, 50


def test_eight_threads_fifty_jobs_each_with_stages_and_scores(tmp_path: Path) -> None:
    """4 threads share one JobStore (the app's case), 4 open their own (another process's
    case); a reader lists the history all along. Every write must land exactly once."""
    path = tmp_path / "jobs.db"
    shared = JobStore(path)
    barrier = threading.Barrier(THREADS + 1)
    errors: list[str] = []
    made: list[list[tuple[str, str]]] = [[] for _ in range(THREADS)]
    stop = threading.Event()

    def worker(k: int) -> None:
        try:
            own = shared if k < THREADS // 2 else JobStore(path)
            barrier.wait()
            for i in range(JOBS_PER_THREAD):
                job_id = own.create(source="api", inputs={"video": f"/in/t{k}-j{i}.mp4", "audio": f"/in/t{k}-j{i}.wav"},
                                    options={"thread": k, "i": i}, model_requested="baseline", hash_inputs=False)
                own.start(job_id)
                own.record_stages(job_id, {"probe": 0.01 * i}, offsets={"probe": 0.0})
                own.record_stages(job_id, {"generate": 1.0 + k, "encode": 0.5}, offsets={"generate": 0.1, "encode": 0.2})
                if i % 10 == 3:
                    own.fail(job_id, error_type="NoFaceFound", message=f"thread {k} job {i}")
                    outcome = "failed"
                elif i % 10 == 7:
                    own.cancel(job_id)
                    outcome = "cancelled"
                else:
                    own.finish(job_id, model_used="baseline", facts={"duration_s": 2.0},
                               scores=[{"metric": "lse_d", "value": 7.0 + k}, {"metric": "psnr_full", "value": 30.0 + i}])
                    outcome = "succeeded"
                made[k].append((job_id, outcome))
            if own is not shared:
                own.close()
        except Exception as exc:  # collected and asserted below, with the thread named
            errors.append(f"thread {k}: {type(exc).__name__}: {exc}")

    def reader() -> None:
        while not stop.is_set():
            try:
                shared.list(limit=20)
                len(shared.list(limit=None, status="succeeded"))
            except Exception as exc:
                errors.append(f"reader: {type(exc).__name__}: {exc}")
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    read = threading.Thread(target=reader)
    for t in threads:
        t.start()
    barrier.wait()
    read.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    read.join(timeout=30)
    assert errors == []
    ids = [job_id for per in made for job_id, _ in per]
    assert len(ids) == len(set(ids)) == THREADS * JOBS_PER_THREAD
    expected = {job_id: outcome for per in made for job_id, outcome in per}
    with sqlite3.connect(path) as conn:
        rows = dict(conn.execute("SELECT id, status FROM jobs").fetchall())
        stages = conn.execute("SELECT count(*), count(DISTINCT job_id) FROM job_stages").fetchone()
        scores = conn.execute("SELECT count(*) FROM job_scores").fetchone()[0]
        inputs = conn.execute("SELECT count(*) FROM job_inputs").fetchone()[0]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert rows == expected  # no lost, duplicated or extra rows; each has its own outcome
    assert set(rows.values()) <= set(TERMINAL)
    assert stages == (3 * len(ids), len(ids))
    n_ok = sum(1 for o in expected.values() if o == "succeeded")
    assert n_ok == THREADS * 40 and scores == 2 * n_ok and inputs == 2 * len(ids)
    one = shared.get(made[5][0][0])
    assert one["options"] == {"thread": 5, "i": 0} and one["gpu_seconds"] == 6.0
    shared.close()


@pytest.mark.parametrize("round_", range(25))
def test_many_processes_opening_a_fresh_file_migrate_it_once(tmp_path: Path, round_: int) -> None:
    """Six openers race on one fresh file: one migrates, all switch to WAL. The race is
    rare (SQLite refused the WAL switch at once in ~3% of rounds before the retry in
    storage.db), so it runs 25 rounds."""
    path = tmp_path / "fresh" / "jobs.db"
    barrier = threading.Barrier(6)
    errors: list[str] = []

    def opener() -> None:
        try:
            barrier.wait()
            with JobStore(path) as s:
                s.create(source="cli", inputs={}, hash_inputs=False)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    db = Database(path)
    assert [r["number"] for r in db[MIGRATIONS_TABLE].rows] == list(range(1, LATEST + 1))
    assert db["jobs"].count == 6 and integrity_check(db) == ["ok"]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def _job_with_files(store: JobStore, clock: FakeClock, finished: datetime, size: int, *,
                    status: str = "succeeded") -> str:
    clock.now = finished - timedelta(minutes=5)
    job_id = store.create(source="cli", inputs={"video": "/in/v.mp4"}, hash_inputs=False)
    folder = store.job_dir(job_id, create=True)
    (folder / "sub").mkdir()
    (folder / "sub" / "result.mp4").write_bytes(b"\0" * size)
    store.start(job_id)
    clock.now = finished
    if status == "succeeded":
        store.finish(job_id, model_used="baseline", outputs={"video": folder / "sub" / "result.mp4"})
    elif status == "failed":
        store.fail(job_id, error_type="InvalidMedia", message="bad")
    return job_id


def test_retention_by_age_then_total_size_keeps_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(T0)
    data = tmp_path / "data"
    monkeypatch.setenv("LIPSYNC_DATA_DIR", str(data))
    monkeypatch.delenv("LIPSYNC_RETENTION_DAYS", raising=False)
    monkeypatch.delenv("LIPSYNC_RETENTION_MB", raising=False)
    elsewhere = tmp_path / "kept-output.mp4"
    elsewhere.write_bytes(b"x")
    now = T0 + timedelta(days=60)
    with JobStore(clock=clock) as store:
        assert store.data_dir == data
        old1 = _job_with_files(store, clock, now - timedelta(days=40), MIB)
        old2 = _job_with_files(store, clock, now - timedelta(days=35), MIB, status="failed")
        new1 = _job_with_files(store, clock, now - timedelta(days=2), 3 * MIB)
        new2 = _job_with_files(store, clock, now - timedelta(days=1), 2 * MIB)
        running = _job_with_files(store, clock, now - timedelta(days=50), MIB, status="running")
        ext = store.create(source="cli", inputs={})
        store.start(ext)
        store.finish(ext, model_used="baseline", outputs={"video": elsewhere})
        assert store.job_dir(old1) == data / "jobs" / old1
        clock.now = now
        assert sorted(store.apply_retention(max_age_days=30)) == sorted([old1, old2])
        assert not store.job_dir(old1).exists() and not store.job_dir(old2).exists()
        assert store.job_dir(running).exists() and elsewhere.exists()
        # 3 + 2 MiB finished + 1 MiB running = 6 MiB > 4: the oldest finished (new1) goes
        assert store.apply_retention(max_total_mb=4) == [new1]
        assert store.job_dir(new2).exists() and store.job_dir(running).exists()
        assert store.apply_retention(max_age_days=30, max_total_mb=4) == []
        jobs = {j["id"]: j for j in store.list(limit=None)}
    assert len(jobs) == 6
    for job_id, size in ((old1, MIB), (old2, MIB), (new1, 3 * MIB)):
        assert jobs[job_id]["files_gone"] is True and jobs[job_id]["files_bytes"] == size
        assert jobs[job_id]["files_deleted_at"].startswith("2025-06-30")
    assert jobs[old2]["status"] == "failed" and jobs[old1]["output_path"].endswith("result.mp4")
    for job_id in (new2, running, ext):
        assert jobs[job_id]["files_gone"] is False
    assert jobs[running]["status"] == "running"


def test_retention_setting_is_applied_when_the_store_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(T0)
    with JobStore(tmp_path / "jobs.db", clock=clock) as store:
        old = _job_with_files(store, clock, T0 - timedelta(days=10), 1000)
        new = _job_with_files(store, clock, T0, 1000)
    monkeypatch.setenv("LIPSYNC_RETENTION_DAYS", "7")
    clock.now = T0
    with JobStore(tmp_path / "jobs.db", clock=clock) as store:
        assert store.pruned == [old]
        assert store.get(old)["files_gone"] and not store.get(new)["files_gone"]
    monkeypatch.setenv("LIPSYNC_RETENTION_MB", "lots")
    with pytest.raises(ValueError, match="LIPSYNC_RETENTION_MB='lots' is not a non-negative number"):
        JobStore(tmp_path / "jobs.db", clock=clock)
