"""Start-up and housekeeping work on the job history: crash recovery and file retention.

Both are reached through :class:`storage.jobs.JobStore` (``recover`` / ``apply_retention``);
they live here to keep the job life cycle in ``storage/jobs.py`` short.

- Recovery marks queued/running jobs whose owning process is gone as ``interrupted``, with
  the time it was noticed. A job whose owner (pid + process start time, on this host) is
  still alive is never touched; on another host (or this container before a restart, under
  its old host name) the owner is gone once its lease, renewed every HEARTBEAT_S by
  :class:`Heartbeat`, is LEASE_S old.
- :class:`Heartbeat` renews the lease of this process's jobs, and runs retention
  periodically in a long-running process.
- Retention deletes ``<data_dir>/jobs/<id>/`` folders of finished jobs by age and then by
  total size (oldest first), keeping every row and marking it ``files_gone``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlite_utils import Database

from storage.records import HEARTBEAT_S, TERMINAL, dir_bytes, iso, owner_alive, parse_iso, self_owner


class JobStore(Protocol):
    """What maintenance needs of ``storage.jobs.JobStore`` (which calls it): no import cycle."""

    def connection(self) -> AbstractContextManager[Database]: ...
    def transaction(self) -> AbstractContextManager[Database]: ...
    def now(self) -> datetime: ...
    def job_dir(self, job_id: str, *, create: bool = False) -> Path: ...

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def recover_orphans(store: JobStore) -> list[str]:
    """Mark queued/running jobs whose owning process is gone as interrupted; their ids.

    A job is orphaned when its recorded (pid, create_time) is not a live process on this
    host, when it belongs to another host name and its lease ran out (``owner_heartbeat_at``,
    else its start, more than LEASE_S ago), or when no owner was recorded (rows from schema
    1). The UPDATE re-checks status and owner, so a job that finished or changed hands
    meanwhile is left alone.
    """
    with store.connection() as db:
        rows = list(db.query(
            "SELECT id, owner_pid, owner_create_time, owner_host, "
            "coalesce(owner_heartbeat_at, started_at, created_at) AS heard FROM jobs "
            "WHERE status IN ('queued', 'running')"))
    now_dt = store.now()
    dead = [r for r in rows if not owner_alive(r["owner_pid"], r["owner_create_time"], r["owner_host"],
                                               heartbeat=parse_iso(r["heard"]) if r["heard"] else None,
                                               now=now_dt)]
    if not dead:
        return []
    now = iso(now_dt)
    marked: list[str] = []
    with store.transaction() as db:
        for r in dead:
            who = (f"the process that owned it (pid {r['owner_pid']} on {r['owner_host']})"
                   if r["owner_pid"] is not None else "its process (not recorded)")
            cur = db.execute(
                "UPDATE jobs SET status = 'interrupted', interrupted_at = ?, error_type = 'Interrupted', "
                "error_message = ? WHERE id = ? AND status IN ('queued', 'running') "
                "AND owner_pid IS ? AND owner_create_time IS ? AND owner_host IS ?",
                [now, f"{who} ended without finishing the job; noticed at {now}", r["id"],
                 r["owner_pid"], r["owner_create_time"], r["owner_host"]])
            if cur.rowcount:
                marked.append(r["id"])
    if marked:
        log.warning("marked %d orphaned job(s) interrupted: %s", len(marked), ", ".join(marked))
    return marked


def apply_retention(store: JobStore, *, max_age_days: float | None = None,
                    max_total_mb: float | None = None) -> list[str]:
    """Delete the job folders of finished jobs older than ``max_age_days`` (by finish time),
    then of the oldest finished jobs until all job folders fit in ``max_total_mb`` MiB.

    Rows are kept and marked ``files_gone`` with ``files_deleted_at`` and the bytes freed.
    Queued/running jobs are never touched (their folders still count toward the total).
    Only ``<data_dir>/jobs/<id>/`` is deleted, never an output written elsewhere. Folders
    of rows already marked gone (a crash mid-delete) are deleted again. Returns the ids
    whose files were deleted now.
    """
    for name, limit in (("max_age_days", max_age_days), ("max_total_mb", max_total_mb)):
        if limit is not None and not limit >= 0:
            raise ValueError(f"{name} must be a non-negative number or None, got {limit!r}")
    now = store.now()
    with store.connection() as db:
        rows = list(db.query("SELECT id, status, created_at, finished_at, files_gone FROM jobs "
                             "ORDER BY coalesce(finished_at, created_at), id"))
    sizes = {r["id"]: dir_bytes(store.job_dir(r["id"])) for r in rows}
    on_disk = {i: s for i, s in sizes.items() if s is not None}
    leftovers = [r["id"] for r in rows if r["files_gone"] and r["id"] in on_disk]
    candidates = [r for r in rows if r["status"] in TERMINAL and not r["files_gone"] and r["id"] in on_disk]
    victims: list[str] = []
    if max_age_days is not None:
        cutoff = now - timedelta(days=max_age_days)
        victims += [r["id"] for r in candidates if parse_iso(r["finished_at"] or r["created_at"]) < cutoff]
    if max_total_mb is not None:
        total = sum(on_disk.values()) - sum(on_disk[i] for i in victims + leftovers)
        for r in candidates:
            if total <= max_total_mb * MIB:
                break
            if r["id"] not in victims:
                victims.append(r["id"])
                total -= on_disk[r["id"]]
    if victims:
        with store.transaction() as db:  # mark first: a crash mid-delete is finished next time
            for job_id in victims:
                db.execute("UPDATE jobs SET files_gone = 1, files_deleted_at = ?, files_bytes = ? "
                           "WHERE id = ?", [iso(now), on_disk[job_id], job_id])
    for job_id in victims + leftovers:
        shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
        if store.job_dir(job_id).exists():
            log.warning("could not delete every file of job %s in %s", job_id, store.job_dir(job_id))
    if victims:
        log.info("retention deleted the files of %d job(s)", len(victims))
    return victims


def renew_leases(store: JobStore) -> int:
    """Renew the lease of every queued/running job this process owns; how many."""
    pid, create_time, host = self_owner()
    with store.transaction() as db:
        cur = db.execute("UPDATE jobs SET owner_heartbeat_at = ? WHERE status IN ('queued', 'running') "
                         "AND owner_pid = ? AND owner_create_time = ? AND owner_host = ?",
                         [iso(store.now()), pid, create_time, host])
        return cur.rowcount


class Heartbeat:
    """A daemon thread of one process: every ``interval_s`` it renews the leases of the jobs
    this process owns and calls each of ``also`` (e.g. touching a work folder's lease file);
    every ``retention_s`` (when given) it applies ``retention()`` too. A failing round is
    logged and the next one tried."""

    def __init__(self, store: JobStore, *, interval_s: float = HEARTBEAT_S,
                 also: tuple[Callable[[], object], ...] = (),
                 retention: Callable[[], object] | None = None, retention_s: float | None = None) -> None:
        self.store, self.interval_s, self.also = store, interval_s, also
        self.retention, self.retention_s = retention, retention_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-heartbeat", daemon=True)
        self._next_retention = time.monotonic() + (retention_s or 0)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def beat(self) -> None:
        """One round: leases, the ``also`` callables, and retention when it is due."""
        renew_leases(self.store)
        for fn in self.also:
            fn()
        if self.retention is not None and self.retention_s and time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + self.retention_s
            self.retention()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a busy database must not end the heartbeat
                log.warning("heartbeat round failed; trying again in %.0f s", self.interval_s, exc_info=True)
