"""Start-up and housekeeping work on the job history: crash recovery and file retention.

Both are reached through :class:`storage.jobs.JobStore` (``recover`` / ``apply_retention``);
they live here to keep the job life cycle in ``storage/jobs.py`` short.

- Recovery marks queued/running jobs whose owning process is gone as ``interrupted``, with
  the time it was noticed. A job whose owner (pid + process start time, on this host) is
  still alive is never touched, nor is a job owned by another host.
- Retention deletes ``<data_dir>/jobs/<id>/`` folders of finished jobs by age and then by
  total size (oldest first), keeping every row and marking it ``files_gone``.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlite_utils import Database

from storage.records import TERMINAL, dir_bytes, iso, owner_alive, parse_iso


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
    host, or when no owner was recorded (rows from schema 1). The UPDATE re-checks status
    and owner, so a job that finished or changed hands meanwhile is left alone.
    """
    with store.connection() as db:
        rows = list(db.query(
            "SELECT id, owner_pid, owner_create_time, owner_host FROM jobs "
            "WHERE status IN ('queued', 'running')"))
    dead = [r for r in rows if not owner_alive(r["owner_pid"], r["owner_create_time"], r["owner_host"])]
    if not dead:
        return []
    now = iso(store.now())
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
