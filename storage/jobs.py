"""JobStore: create, run, finish and look up lip-sync jobs in the job database.

Life of a job: ``create`` (queued) -> ``start`` (running) -> ``record_stages``
-> one of ``finish`` (succeeded), ``fail`` (failed; a timeout is ``error_type="JobTimeout"``)
or ``cancel`` (cancelled). A job whose owning process died is marked interrupted by
:meth:`JobStore.recover`. Every method that writes is one ``BEGIN IMMEDIATE`` transaction.

Process ownership: each queued/running job records the pid, the process start time
(``psutil.Process(pid).create_time()``, so a reused pid is not mistaken for the owner) and
the host name of the process that owns it, and a lease (``owner_heartbeat_at``) that the
owner renews every HEARTBEAT_S while it has jobs (:meth:`JobStore.keep_alive`, started by
the first ``create``). ``recover`` marks jobs whose owner is gone from this host, and jobs
of another host name (another machine, or this container before a restart) whose lease
ran out.

Input names are file names, which on Linux are bytes and need not be UTF-8. They are
stored as display text (undecodable bytes become U+FFFD) and, only when that is lossy, the
exact bytes of the path as hex in ``raw_path_hex`` (``bytes.fromhex``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from storage import maintenance, records
from storage.migrations import open_db, prepare
from storage.db import (BUSY_TIMEOUT_S, DB_FILENAME, InvalidJobState, JobNotFound, connect,
                        retention_from_env, write_transaction)
from storage.db import data_dir as default_data_dir
from storage.records import (ACTIVE, check_job_id, clean_text, dumps, iso, parse_iso,
                             process_owner, self_owner, where_clause)

log = logging.getLogger(__name__)

SOURCES = ("app", "cli", "api")
BILLABLE_STAGES = ("generate",)  # stages whose seconds count as GPU-seconds (see finish)
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


JOBS_FOLDER = "jobs"  # a job's files live in <data_dir>/jobs/<id>/

class JobStore:
    """The job history. Thread-safe: each thread gets its own connection to the file.

    ``db`` is a path to the database file, an open :class:`sqlite_utils.Database` (then all
    threads share it under a lock; meant for ``Database(memory=True)`` in tests), or None
    for ``$LIPSYNC_DATA_DIR/jobs.db``. Job folders live under ``<data_dir>/jobs/<id>/``;
    ``data_dir`` defaults to the database file's folder (or ``$LIPSYNC_DATA_DIR``).
    ``recover=True`` runs :meth:`recover` once at open; its ids are in ``self.recovered``.
    ``retention=True`` then applies ``$LIPSYNC_RETENTION_DAYS`` / ``$LIPSYNC_RETENTION_MB``
    (when set) with :meth:`apply_retention`; the ids are in ``self.pruned``.
    ``clock`` returns the current aware datetime (tests pass a fake one).
    """

    def __init__(self, db: Database | str | os.PathLike[str] | None = None, *,
                 data_dir: str | os.PathLike[str] | None = None, recover: bool = True,
                 retention: bool = True, busy_timeout_s: float = BUSY_TIMEOUT_S, clock: Clock = _utcnow) -> None:
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._local = threading.local()
        self._opened: list[Database] = []
        self._shared: Database | None = None
        self._heartbeat: maintenance.Heartbeat | None = None
        if isinstance(db, Database):
            self._shared = prepare(db, busy_timeout_s=busy_timeout_s)
            self.path: Path | None = None
            default_dir = default_data_dir()
        else:
            self.path = Path(db) if db is not None else default_data_dir() / DB_FILENAME
            first = open_db(self.path, busy_timeout_s=busy_timeout_s)  # migrates
            self._local.db = first
            self._opened.append(first)
            default_dir = self.path.parent
        self.data_dir = Path(data_dir) if data_dir is not None else default_dir
        try:
            self.recovered: list[str] = self.recover() if recover else []
            self.pruned: list[str] = self.apply_env_retention() if retention else []
        except BaseException:
            self.close()
            raise

    # -- connections -----------------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self) -> Iterator[Database]:
        """This thread's connection (read-only use by callers such as storage.reports)."""
        if self._shared is not None:
            with self._lock:
                yield self._shared
            return
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path, busy_timeout_s=self._busy_timeout_s)  # type: ignore[arg-type]
            self._local.db = db
            with self._lock:
                self._opened.append(db)
        yield db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """One write transaction (``BEGIN IMMEDIATE``) on this thread's connection."""
        with self.connection() as db, write_transaction(db):
            yield db

    def now(self) -> datetime:
        """The store's clock (aware UTC datetime; tests pass a fake one)."""
        return self._clock()

    def keep_alive(self, *, also: tuple[Callable[[], object], ...] = (),
                   retention_s: float | None = None) -> None:
        """(Re)start this store's :class:`storage.maintenance.Heartbeat`: it renews the leases of
        this process's jobs, calls ``also`` each round and, every ``retention_s`` seconds,
        applies the retention settings of the environment (a long-running server)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self._heartbeat = maintenance.Heartbeat(self, also=also, retention=self.apply_env_retention,
                                                retention_s=retention_s).start()

    def close(self) -> None:
        """Stop the heartbeat; close every connection this store opened (not a Database passed in)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        with self._lock:
            for db in self._opened:
                db.close()
            self._opened.clear()
        self._local = threading.local()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------

    def create(self, *, source: str, inputs: Mapping[str, Any], options: Mapping[str, Any] | None = None,
               model_requested: str | None = None, user: str | None = None, kind: str = "lipsync",
               hash_inputs: bool = True) -> str:
        """Record a new queued job owned by this process; returns its id.

        ``inputs`` maps a role ("video", "audio") to a path (str, bytes or PathLike) or to a
        dict with ``path`` and optional ``sha256``, ``size_bytes`` and ``probe`` (probe facts).
        A missing sha256/size of an existing file is computed when ``hash_inputs``.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        rows = [records.input_row(role, spec, hash_inputs=hash_inputs)
                for role, spec in inputs.items()]
        now = self.now()
        pid, create_time, host = self_owner()
        if self._heartbeat is None and self._shared is None:
            # this process now owns a job: its lease must be renewed. Not for a Database handed
            # in (a test's in-memory one): its one connection belongs to the thread that made it
            self.keep_alive()
        with self.transaction() as db:
            job_id = records.unique_id(db, "jobs", now)
            db["jobs"].insert({
                "id": job_id, "kind": clean_text(kind), "source": source,
                "user": clean_text(user), "status": "queued", "created_at": iso(now),
                "model_requested": clean_text(model_requested), "options_json": dumps(options or {}),
                "owner_pid": pid, "owner_create_time": create_time, "owner_host": host,
                "owner_heartbeat_at": iso(now),
            })
            for row in rows:
                db["job_inputs"].insert({"job_id": job_id, **row})
        return job_id

    def start(self, job_id: str, *, pid: int | None = None) -> None:
        """queued -> running, owned by process ``pid`` (default: this process)."""
        owner = self_owner() if pid is None else process_owner(pid)
        now = self.now()
        with self.transaction() as db:
            job = self._require(db, job_id, ("queued",), "start")
            db.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, queue_wait_s = ?, "
                "owner_pid = ?, owner_create_time = ?, owner_host = ?, owner_heartbeat_at = ? WHERE id = ?",
                [iso(now), _seconds(job["created_at"], now), *owner, iso(now), job_id])

    def record_stages(self, job_id: str, seconds: Mapping[str, float], *,
                      offsets: Mapping[str, float] | None = None) -> None:
        """Several stages in one transaction (``RunResult.timings`` / ``.stage_offsets``)."""
        with self.transaction() as db:
            self._require(db, job_id, ACTIVE, "record stages of")
            _upsert_stages(db, job_id, seconds, offsets or {})

    def finish(self, job_id: str, *, model_used: str, model_reason: str | None = None,
               outputs: Mapping[str, Any] | None = None, facts: Mapping[str, Any] | None = None,
               device: Mapping[str, Any] | None = None, output_duration_s: float | None = None,
               stage_seconds: Mapping[str, float] | None = None,
               stage_offsets: Mapping[str, float] | None = None,
               scores: Iterable[Mapping[str, Any]] | None = None,
               gpu_seconds: float | None = None) -> None:
        """running -> succeeded, with everything the job produced, in one transaction.

        ``outputs`` maps a name to a path (``"video"`` is the primary output);
        ``output_duration_s`` defaults to ``facts["duration_s"]``; ``gpu_seconds`` (the
        billable seconds behind the cost report) defaults to the sum of the
        :data:`BILLABLE_STAGES` seconds: the generator stage, whether it ran on a GPU or on
        the CPU (on a CPU-only host that is the time a GPU host would have been billed).
        """
        facts = dict(facts or {})
        outs = {str(k): records.display_path(v) for k, v in (outputs or {}).items()}
        duration = output_duration_s if output_duration_s is not None else facts.get("duration_s")
        score_rows = [records.score_row(s) for s in scores or ()]
        now = self.now()
        with self.transaction() as db:
            job = self._require(db, job_id, ("running",), "finish")
            _upsert_stages(db, job_id, stage_seconds or {}, stage_offsets or {})
            _upsert_scores(db, job_id, score_rows, iso(now))
            if device is not None:
                db["job_devices"].insert({"job_id": job_id, **records.device_row(device)}, replace=True)
            if gpu_seconds is None:
                marks = ",".join("?" * len(BILLABLE_STAGES))
                gpu_seconds = db.execute(
                    f"SELECT sum(seconds) FROM job_stages WHERE job_id = ? AND stage IN ({marks})",
                    [job_id, *BILLABLE_STAGES]).fetchone()[0]
            db.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at = ?, run_s = ?, model_used = ?, "
                "model_reason = ?, outputs_json = ?, output_path = ?, facts_json = ?, "
                "output_duration_s = ?, gpu_seconds = ? WHERE id = ?",
                [iso(now), _seconds(job["started_at"], now), clean_text(model_used),
                 clean_text(model_reason), dumps(outs), outs.get("video", next(iter(outs.values()), None)),
                 dumps(facts), _float_or_none(duration), _float_or_none(gpu_seconds), job_id])

    def fail(self, job_id: str, *, error_type: str, message: str,
             stage_seconds: Mapping[str, float] | None = None,
             stage_offsets: Mapping[str, float] | None = None,
             device: Mapping[str, Any] | None = None) -> None:
        """queued/running -> failed. ``error_type`` is the exception class name
        (``"NoFaceFound"``, ``"JobTimeout"`` for a timeout); partial stage times are kept."""
        self._end(job_id, "failed", "fail", error_type, message, stage_seconds, stage_offsets, device)

    def cancel(self, job_id: str, reason: str = "cancelled by the user") -> None:
        """queued/running -> cancelled (``error_type="Cancelled"``, the reason as message)."""
        self._end(job_id, "cancelled", "cancel", "Cancelled", reason, None, None, None)

    def _end(self, job_id: str, status: str, action: str, error_type: str, message: str,
             stage_seconds: Mapping[str, float] | None, stage_offsets: Mapping[str, float] | None,
             device: Mapping[str, Any] | None) -> None:
        now = self.now()
        with self.transaction() as db:
            job = self._require(db, job_id, ACTIVE, action)
            _upsert_stages(db, job_id, stage_seconds or {}, stage_offsets or {})
            if device is not None:
                db["job_devices"].insert({"job_id": job_id, **records.device_row(device)}, replace=True)
            run_s = _seconds(job["started_at"], now) if job["started_at"] else None
            db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, run_s = ?, error_type = ?, "
                "error_message = ? WHERE id = ?",
                [status, iso(now), run_s, clean_text(error_type), clean_text(message), job_id])

    # -- recovery and retention ------------------------------------------------------------

    def recover(self) -> list[str]:
        """Mark queued/running jobs whose owning process is gone as interrupted (with the
        time it was noticed); a job owned by a live process is never touched. Returns the
        ids marked. See :func:`storage.maintenance.recover_orphans`."""
        return maintenance.recover_orphans(self)

    def job_dir(self, job_id: str, *, create: bool = False) -> Path:
        """``<data_dir>/jobs/<id>/`` for a well-formed id (InvalidJobId otherwise: no traversal)."""
        path = self.data_dir / JOBS_FOLDER / check_job_id(job_id)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def apply_retention(self, *, max_age_days: float | None = None,
                        max_total_mb: float | None = None) -> list[str]:
        """Delete the files under ``job_dir`` of finished jobs older than ``max_age_days``,
        then of the oldest until they fit in ``max_total_mb`` MiB; rows are kept, marked
        ``files_gone``. Returns the ids. See :func:`storage.maintenance.apply_retention`."""
        return maintenance.apply_retention(self, max_age_days=max_age_days, max_total_mb=max_total_mb)

    def apply_env_retention(self) -> list[str]:
        """:meth:`apply_retention` with ``$LIPSYNC_RETENTION_DAYS`` / ``$LIPSYNC_RETENTION_MB``
        (nothing when neither is set). Returns the ids."""
        limits = retention_from_env()
        return self.apply_retention(**limits) if any(v is not None for v in limits.values()) else []

    # -- reads -----------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any]:
        """One job with ``inputs``, ``stages`` (by start offset), ``scores`` and ``device``."""
        check_job_id(job_id)
        with self.connection() as db:
            row = next(db.query("SELECT * FROM jobs WHERE id = ?", [job_id]), None)
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r} in the job history")
            job = records.job_record(row)
            job["inputs"] = records.inputs_for(db, [job_id]).get(job_id, [])
            job["stages"] = [dict(r) for r in db.query(
                "SELECT stage, start_offset_s, seconds FROM job_stages WHERE job_id = ? "
                "ORDER BY start_offset_s, stage", [job_id])]
            job["scores"] = [records.score_record(r) for r in db.query(
                "SELECT metric, value, reason, convention_json, recorded_at FROM job_scores "
                "WHERE job_id = ? ORDER BY metric", [job_id])]
            dev = next(db.query("SELECT * FROM job_devices WHERE job_id = ?", [job_id]), None)
            job["device"] = records.device_record(dev) if dev else None
        return job

    def list(self, *, status: str | Iterable[str] | None = None, model: str | None = None,
             since: Any = None, until: Any = None, text: str | None = None,
             source: str | None = None, user: str | None = None,
             limit: int | None = 200, offset: int = 0) -> list[dict[str, Any]]:
        """Jobs newest first, each with ``inputs`` (no stages/scores: use get).

        ``model`` matches the model used (the requested one while unknown); ``since`` is
        inclusive and ``until`` exclusive on created_at (datetime, date or ISO text; naive
        means UTC; a bare date as ``until`` includes that whole day); ``text`` is a
        case-insensitive substring of an input name, taken literally (no wildcards).
        ``limit=None`` returns all.
        """
        where, params = where_clause(status=status, model=model, since=since, until=until,
                                 text=text, source=source, user=user)
        if limit is not None and (int(limit) != limit or limit < 0):
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
        if int(offset) != offset or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        sql = f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        with self.connection() as db:
            jobs = [records.job_record(r) for r in db.query(sql, [*params, -1 if limit is None else int(limit), int(offset)])]
            inputs = records.inputs_for(db, [j["id"] for j in jobs])
        for job in jobs:
            job["inputs"] = inputs.get(job["id"], [])
        return jobs

    def _require(self, db: Database, job_id: str, allowed: Iterable[str], action: str) -> dict[str, Any]:
        check_job_id(job_id)
        row = db.execute("SELECT status, created_at, started_at FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r} in the job history")
        if row[0] not in allowed:
            raise InvalidJobState(f"cannot {action} job {job_id}: it is {row[0]} "
                                  f"(allowed only when {' or '.join(allowed)})")
        return {"status": row[0], "created_at": row[1], "started_at": row[2]}


def _upsert_stages(db: Database, job_id: str, seconds: Mapping[str, float], offsets: Mapping[str, float]) -> None:
    for stage, secs in seconds.items():
        db.execute(
            "INSERT INTO job_stages (job_id, stage, start_offset_s, seconds) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (job_id, stage) DO UPDATE SET start_offset_s = excluded.start_offset_s, "
            "seconds = excluded.seconds",
            [job_id, clean_text(stage), float(offsets.get(stage, 0.0)), float(secs)])


def _upsert_scores(db: Database, job_id: str, rows: list[dict[str, Any]], now: str) -> None:
    for row in rows:
        db["job_scores"].insert({"job_id": job_id, **row, "recorded_at": now}, replace=True)


def _seconds(start_iso: str, end: datetime) -> float:
    return round((end - parse_iso(start_iso)).total_seconds(), 6)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


