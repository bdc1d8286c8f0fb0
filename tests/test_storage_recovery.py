"""Crash recovery with real child processes (SIGKILL mid-job, a live owner left alone) and
schema migrations of real files (schema 1 only -> current, a newer file refused)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.db import DatabaseTooNew, StorageUnavailable, connect, write_transaction
from storage.jobs import JobStore
from storage.migrations import LATEST, MIGRATIONS_TABLE, migrate, schema_version

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from storage.jobs import JobStore
store = JobStore(sys.argv[2])
job_id = store.create(source="cli", inputs={"video": "/in/v.mp4"}, model_requested="baseline", hash_inputs=False)
store.start(job_id)
store.record_stages(job_id, {"probe": 0.125}, offsets={"probe": 0.0})
print(job_id, flush=True)
if sys.argv[3] == "busy":  # keep writing, so the kill lands mid-transaction
    i = 0
    while True:
        i += 1
        store.record_stages(job_id, {f"step{i % 40}": float(i), "generate": i / 10}, offsets={"generate": 0.5})
else:  # stay alive, idle, until the parent closes stdin; then exit without finishing
    sys.stdin.read()
"""


def _child(db: Path, mode: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(db), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    job_id = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not job_id:
        proc.kill()
        proc.wait()
        pytest.fail(f"child process printed no job id (exit {proc.returncode})")
    return proc, job_id


def test_sigkill_mid_job_leaves_a_sound_file_and_an_interrupted_job(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    proc, job_id = _child(db, "busy")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until its write loop is committing
        with sqlite3.connect(db, timeout=10) as conn:
            if conn.execute("SELECT count(*) FROM job_stages WHERE stage = 'generate'").fetchone()[0]:
                break
        conn.close()
        time.sleep(0.02)
    time.sleep(0.2)  # a few hundred more transactions, then kill one mid-flight
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as conn:  # a plain client opens it, and it is sound
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT status FROM jobs WHERE id = ?", [job_id]).fetchone() == ("running",)
    conn.close()
    with JobStore(db) as store:  # the next start notices
        assert store.recovered == [job_id]
        job = store.get(job_id)
        with store.connection() as conn2:
            assert conn2.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert job["status"] == "interrupted" and job["error_type"] == "Interrupted"
    assert job["interrupted_at"] is not None and job["finished_at"] is None
    assert f"pid {proc.pid}" in job["error_message"] and job["interrupted_at"] in job["error_message"]
    stages = {s["stage"]: s["seconds"] for s in job["stages"]}
    assert stages["probe"] == 0.125 and stages["generate"] > 0  # committed work survives
    with JobStore(db) as again:
        assert again.recovered == []  # marked once


def test_a_job_of_a_live_process_is_never_touched(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    proc, job_id = _child(db, "idle")
    try:
        with JobStore(db) as store:
            assert store.recovered == []
            assert store.recover() == []
            assert store.get(job_id)["status"] == "running"
        out = subprocess.run([sys.executable, "-m", "storage", "--db", str(db), "recover"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "marked 0 job(s)" in out.stdout
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
    assert proc.returncode == 0
    with JobStore(db) as store:  # its owner ended without finishing it: now it is orphaned
        assert store.recovered == [job_id]
        assert store.get(job_id)["status"] == "interrupted"


def test_reused_pid_and_other_hosts(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.db") as store:
        mine, reused, remote = (store.create(source="app", inputs={}) for _ in range(3))
        for job_id in (mine, reused, remote):
            store.start(job_id)
        with store.transaction() as db:
            # same pid as a live process but another start time: the pid was reused
            db.execute("UPDATE jobs SET owner_create_time = owner_create_time - 1000 WHERE id = ?", [reused])
            # a pid that cannot exist here, on another host: not ours to judge
            db.execute("UPDATE jobs SET owner_pid = 99999999, owner_host = 'gpu-box-2' WHERE id = ?", [remote])
        assert store.recover() == [reused]
        assert [store.get(j)["status"] for j in (mine, reused, remote)] == ["running", "interrupted", "running"]


def _schema_1_file(path: Path) -> None:
    db = connect(path)
    assert migrate(db, target=1) == [1]
    with write_transaction(db):
        db.execute(
            "INSERT INTO jobs (id, source, status, created_at, started_at, finished_at, run_s, model_requested, "
            "model_used, options_json, outputs_json, output_path, facts_json) VALUES "
            "('20240102-030405678-oldjob01', 'cli', 'succeeded', '2024-01-02T03:04:05.678000+00:00', "
            "'2024-01-02T03:04:06.000000+00:00', '2024-01-02T03:04:16.000000+00:00', 10.0, 'wav2lip', "
            "'wav2lip', '{\"fps\": 25}', '{\"video\": \"/out/a.mp4\"}', '/out/a.mp4', '{\"duration_s\": 3.5}')")
        db.execute(
            "INSERT INTO jobs (id, source, status, created_at, started_at) VALUES "
            "('20240102-030500000-oldjob02', 'app', 'running', '2024-01-02T03:05:00.000000+00:00', "
            "'2024-01-02T03:05:01.000000+00:00')")
        db.execute("INSERT INTO job_inputs (job_id, role, name, path, sha256, size_bytes) VALUES "
                   "('20240102-030405678-oldjob01', 'video', 'a.mp4', '/in/a.mp4', 'ab', 12)")
        db.execute("INSERT INTO job_stages VALUES ('20240102-030405678-oldjob01', 'generate', 1.0, 2.0), "
                   "('20240102-030405678-oldjob01', 'probe', 0.0, 0.5)")
        db.execute("INSERT INTO job_scores (job_id, metric, value, reason, recorded_at) VALUES "
                   "('20240102-030405678-oldjob01', 'lse_d', 7.5, NULL, '2024-01-02T03:04:16.000000+00:00'), "
                   "('20240102-030405678-oldjob01', 'lse_c', NULL, 'no weights', '2024-01-02T03:04:16.000000+00:00')")
    db.close()


def test_a_schema_1_file_gains_the_new_columns_with_rows_intact(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    _schema_1_file(path)
    with sqlite3.connect(path) as conn:
        before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                  for t in ("job_inputs", "job_stages", "job_scores")}
        old_cols = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
    conn.close()
    assert "owner_pid" not in old_cols and "files_gone" not in old_cols

    with JobStore(path) as store:
        with store.connection() as db:
            assert schema_version(db) == LATEST
            assert [r["number"] for r in db[MIGRATIONS_TABLE].rows] == list(range(1, LATEST + 1))
            cols = set(db["jobs"].columns_dict)
            after = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in before}
        assert {"owner_pid", "owner_create_time", "owner_host", "interrupted_at", "files_gone",
                "files_deleted_at", "files_bytes", "output_duration_s", "gpu_seconds"} <= cols
        assert after == before
        old = store.get("20240102-030405678-oldjob01")
        assert store.recovered == ["20240102-030500000-oldjob02"]  # no owner was recorded
        new_id = store.create(source="cli", inputs={})  # and the file takes new jobs
    assert (old["status"], old["run_s"], old["options"], old["output_path"]) == ("succeeded", 10.0, {"fps": 25}, "/out/a.mp4")
    assert old["output_duration_s"] == 3.5 and old["gpu_seconds"] == 2.0  # backfilled by migration 3
    assert old["files_gone"] is False and old["owner_pid"] is None
    assert {s["metric"]: s["value"] for s in old["scores"]} == {"lse_c": None, "lse_d": 7.5}
    with JobStore(path) as store:
        assert len(store.list(limit=None)) == 3 and store.get(new_id)["status"] == "queued"
        with store.connection() as db:
            assert migrate(db) == []


def test_a_newer_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with JobStore(data / "jobs.db") as store:
        store.create(source="cli", inputs={})
        with store.transaction() as db:
            db[MIGRATIONS_TABLE].insert({"number": LATEST + 1, "name": "from_the_future",
                                         "applied_at": "2030-01-01T00:00:00+00:00"})
    with pytest.raises(DatabaseTooNew) as err:
        JobStore(data / "jobs.db")
    text = str(err.value)
    assert f"schema version {LATEST + 1}" in text and f"up to {LATEST}" in text
    assert "newer release" in text and "LIPSYNC_DATA_DIR" in text
    out = subprocess.run([sys.executable, "-m", "storage", "history"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "LIPSYNC_DATA_DIR": str(data)}, timeout=60)
    assert out.returncode == 2 and "newer release" in out.stderr
    with sqlite3.connect(data / "jobs.db") as conn:  # refused, not changed
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    conn.close()


def test_a_damaged_file_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is not an SQLite file at all" * 100)
    with pytest.raises(StorageUnavailable, match="not a database.*move the damaged file aside"):
        JobStore(path)
