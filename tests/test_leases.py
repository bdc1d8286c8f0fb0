"""Job ownership that survives a container restart (an owner lease renewed by a heartbeat)
and retention in a long-running process: real SQLite files, real folders, the real
heartbeat thread."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobs.workspace import LEASE_FILE, WORK_FOLDER, clean_stale_work_dirs, process_work_dir
from storage.jobs import JobStore
from storage.maintenance import Heartbeat
from storage.records import LEASE_S, iso


def _as_other_host(store: JobStore, job_id: str, *, heard: datetime) -> None:
    """Make ``job_id`` look owned by a process of another host name (e.g. this container
    before a restart), last heard of at ``heard``."""
    with store.transaction() as db:
        db.execute("UPDATE jobs SET owner_host = 'container-before-restart', owner_pid = 1, "
                   "owner_heartbeat_at = ? WHERE id = ?", [iso(heard), job_id])


def test_a_running_job_of_a_gone_host_is_interrupted_at_start_whatever_its_host(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    now = datetime.now(timezone.utc)
    with JobStore(db) as store:
        stale, fresh = (store.create(source="app", inputs={}) for _ in range(2))
        for job_id in (stale, fresh):
            store.start(job_id)
        _as_other_host(store, stale, heard=now - timedelta(seconds=LEASE_S + 5))
        _as_other_host(store, fresh, heard=now - timedelta(seconds=5))
    with JobStore(db) as restarted:  # the next start-up, under a new host name
        assert restarted.recovered == [stale]
        assert restarted.get(stale)["status"] == "interrupted"
        assert "pid 1 on container-before-restart" in restarted.get(stale)["error_message"]
        assert restarted.get(fresh)["status"] == "running"  # its owner still renews its lease


def test_the_heartbeat_renews_this_processs_leases_only(tmp_path: Path) -> None:
    clock = [datetime(2030, 1, 1, tzinfo=timezone.utc)]
    with JobStore(tmp_path / "jobs.db", clock=lambda: clock[0]) as store:
        mine, other = (store.create(source="app", inputs={}) for _ in range(2))
        store.start(mine)
        _as_other_host(store, other, heard=clock[0])
        clock[0] += timedelta(minutes=10)
        Heartbeat(store).beat()
        assert store.get(mine)["owner_heartbeat_at"] == iso(clock[0])
        assert store.get(other)["owner_heartbeat_at"] == iso(clock[0] - timedelta(minutes=10))


def test_the_heartbeat_thread_renews_and_applies_retention_periodically(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-running store: retention runs on the heartbeat's schedule, not only at open."""
    monkeypatch.setenv("LIPSYNC_RETENTION_DAYS", "1")
    clock = [datetime.now(timezone.utc)]
    touched: list[float] = []
    with JobStore(tmp_path / "jobs.db", data_dir=tmp_path, clock=lambda: clock[0]) as store:
        old = store.create(source="app", inputs={})
        store.start(old)
        store.finish(old, model_used="baseline")
        (store.job_dir(old, create=True) / "result.mp4").write_bytes(b"x" * 100)
        store._heartbeat.stop()  # noqa: SLF001 - the one create() started; a fast one instead
        store._heartbeat = Heartbeat(store, interval_s=0.05, also=(lambda: touched.append(1.0),),  # noqa: SLF001
                                     retention=lambda: store.apply_retention(max_age_days=1),
                                     retention_s=0.1).start()
        clock[0] += timedelta(days=2)  # two days later, the server still running
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not store.get(old)["files_gone"]:
            time.sleep(0.05)
        assert store.get(old)["files_gone"] and not store.job_dir(old).exists()
        assert touched


def test_keep_alive_applies_the_environments_retention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_RETENTION_DAYS", "1")
    clock = [datetime.now(timezone.utc)]
    with JobStore(tmp_path / "jobs.db", data_dir=tmp_path, clock=lambda: clock[0]) as store:
        job = store.create(source="app", inputs={})
        store.start(job)
        store.finish(job, model_used="baseline")
        (store.job_dir(job, create=True) / "result.mp4").write_bytes(b"x")
        store.keep_alive(retention_s=0.01)
        clock[0] += timedelta(days=3)
        time.sleep(0.02)
        store._heartbeat.beat()  # noqa: SLF001 - one round now instead of in 30 s
        assert store.get(job)["files_gone"]


def test_work_folders_of_another_host_go_when_their_lease_is_stale(tmp_path: Path) -> None:
    root = tmp_path / WORK_FOLDER
    stale, fresh = root / "old-container_7_1700000000.000", root / "other-box_7_1700000000.000"
    for d in (stale, fresh):
        (d / "lipsync-job-x").mkdir(parents=True)
        (d / LEASE_FILE).touch()
    long_ago = time.time() - LEASE_S - 60
    os.utime(stale / LEASE_FILE, (long_ago, long_ago))
    mine = process_work_dir(tmp_path)
    assert (mine / LEASE_FILE).is_file()
    assert clean_stale_work_dirs(tmp_path) == [stale]
    assert fresh.is_dir() and mine.is_dir()
