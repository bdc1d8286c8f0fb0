"""Ordered, numbered schema migrations, recorded in the database they changed.

Rules: a migration, once released, is never edited (it describes how an old file became a
newer one); a change is a new migration with the next number. Each migration runs inside
the same ``BEGIN IMMEDIATE`` transaction that records it in ``schema_migrations``, so a
crash leaves either the old schema or the new one, and two processes opening an old file
at once apply each migration exactly once (the second waits, then finds nothing to do).

Schema after the latest migration (all timestamps are UTC ISO-8601 text with microseconds,
e.g. ``2025-05-01T12:00:00.000000+00:00``, so text order is time order):

- ``jobs``: id, kind, source (app/cli/api), user, status, created_at, started_at,
  finished_at, queue_wait_s, run_s, model_requested, model_used, model_reason,
  options_json, outputs_json, output_path, facts_json, error_type, error_message,
  owner_pid, owner_create_time, owner_host, interrupted_at (2), files_gone,
  files_deleted_at, files_bytes, output_duration_s, gpu_seconds (3), owner_heartbeat_at (5)
- ``job_inputs``: (job_id, role) -> name, path, raw_path_hex, sha256, size_bytes, probe_json
- ``job_stages``: (job_id, stage) -> start_offset_s, seconds
- ``job_scores``: (job_id, metric) -> value (NULL only with a reason), reason,
  convention_json, recorded_at
- ``job_devices``: job_id -> device, cpu_model, cpu_count, gpu_model, peak_rss_mb,
  peak_gpu_mb, extra_json
- ``suite_runs`` (4): id -> suite, definition_json, status, source, user, created_at,
  finished_at, total_jobs, summary_json
- ``suite_jobs`` (4): (run_id, pair, setting) -> job_id (unique), model, position
- ``review_pairs`` (4): id -> reviewer, run_id, pair, job_a, job_b (as shown left, right),
  job_lo, job_hi (the two in id order; unique per reviewer), created_at
- ``ratings`` (4): id -> pair_id (unique), reviewer, job_a, job_b, setting_a, setting_b, sync,
  quality ('a', 'b' or 'tie'), opinion_a, opinion_b (1-5 or NULL), note, created_at
- ``app_secrets`` (4): name -> value (the key that signs review pair ids)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlite_utils import Database

from storage.db import (BUSY_TIMEOUT_S, DatabaseTooNew, configure, connect, db_label, default_db_path,
                        write_transaction)

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "schema_migrations"

_INITIAL_SQL = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'lipsync',
    source TEXT NOT NULL,
    user TEXT,
    status TEXT NOT NULL CHECK (status IN
        ('queued', 'running', 'succeeded', 'failed', 'interrupted', 'cancelled')),
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    queue_wait_s REAL,
    run_s REAL,
    model_requested TEXT,
    model_used TEXT,
    model_reason TEXT,
    options_json TEXT NOT NULL DEFAULT '{}',
    outputs_json TEXT NOT NULL DEFAULT '{}',
    output_path TEXT,
    facts_json TEXT NOT NULL DEFAULT '{}',
    error_type TEXT,
    error_message TEXT
);
CREATE INDEX jobs_created_at ON jobs (created_at);
CREATE INDEX jobs_status ON jobs (status);
CREATE TABLE job_inputs (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT,
    raw_path_hex TEXT,
    sha256 TEXT,
    size_bytes INTEGER,
    probe_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, role)
);
CREATE TABLE job_stages (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    stage TEXT NOT NULL,
    start_offset_s REAL NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (job_id, stage)
);
CREATE TABLE job_scores (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    value REAL,
    reason TEXT,
    convention_json TEXT NOT NULL DEFAULT '{}',
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (job_id, metric),
    CHECK (value IS NOT NULL OR reason IS NOT NULL)
);
CREATE TABLE job_devices (
    job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    device TEXT,
    cpu_model TEXT,
    cpu_count INTEGER,
    gpu_model TEXT,
    peak_rss_mb REAL,
    peak_gpu_mb REAL,
    extra_json TEXT NOT NULL DEFAULT '{}'
);
"""


def _m1_initial(db: Database) -> None:
    """Jobs with their inputs, per-stage timings, scores and device facts."""
    db.executescript(_INITIAL_SQL)


def _m2_process_ownership(db: Database) -> None:
    """Which process owns a queued/running job, so recovery never touches a live one."""
    jobs = db["jobs"]
    jobs.add_column("owner_pid", int)
    jobs.add_column("owner_create_time", float)  # psutil create_time(): tells pid reuse apart
    jobs.add_column("owner_host", str)
    jobs.add_column("interrupted_at", str)


def _m3_retention_and_cost(db: Database) -> None:
    """Retention bookkeeping and the per-job numbers behind real-time factor and cost."""
    jobs = db["jobs"]
    jobs.add_column("files_gone", int, not_null_default=0)
    jobs.add_column("files_deleted_at", str)
    jobs.add_column("files_bytes", int)
    jobs.add_column("output_duration_s", float)
    jobs.add_column("gpu_seconds", float)
    jobs.create_index(["finished_at"], index_name="jobs_finished_at")
    db.execute(
        "UPDATE jobs SET output_duration_s = json_extract(facts_json, '$.duration_s') "
        "WHERE json_valid(facts_json) AND json_type(facts_json, '$.duration_s') IN ('real', 'integer')")
    db.execute(
        "UPDATE jobs SET gpu_seconds = (SELECT sum(seconds) FROM job_stages s "
        "WHERE s.job_id = jobs.id AND s.stage = 'generate') WHERE status = 'succeeded'")


_SUITES_SQL = """
CREATE TABLE suite_runs (
    id TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    definition_json TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted')),
    source TEXT NOT NULL,
    user TEXT,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    total_jobs INTEGER NOT NULL,
    summary_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX suite_runs_suite ON suite_runs (suite, created_at);
CREATE TABLE suite_jobs (
    run_id TEXT NOT NULL REFERENCES suite_runs (id) ON DELETE CASCADE,
    job_id TEXT NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    pair TEXT NOT NULL,
    setting TEXT NOT NULL,
    model TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (run_id, pair, setting)
);
CREATE TABLE review_pairs (
    id TEXT PRIMARY KEY,
    reviewer TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES suite_runs (id) ON DELETE CASCADE,
    pair TEXT NOT NULL,
    job_a TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    job_b TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    job_lo TEXT NOT NULL,
    job_hi TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (reviewer, job_lo, job_hi),
    CHECK (job_a <> job_b AND job_lo < job_hi)
);
CREATE TABLE ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id TEXT NOT NULL UNIQUE REFERENCES review_pairs (id) ON DELETE CASCADE,
    reviewer TEXT NOT NULL,
    job_a TEXT NOT NULL,
    job_b TEXT NOT NULL,
    setting_a TEXT NOT NULL,
    setting_b TEXT NOT NULL,
    sync TEXT NOT NULL CHECK (sync IN ('a', 'b', 'tie')),
    quality TEXT NOT NULL CHECK (quality IN ('a', 'b', 'tie')),
    opinion_a INTEGER CHECK (opinion_a BETWEEN 1 AND 5),
    opinion_b INTEGER CHECK (opinion_b BETWEEN 1 AND 5),
    note TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX ratings_reviewer ON ratings (reviewer);
CREATE TABLE app_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _m4_suites_and_ratings(db: Database) -> None:
    """Suite runs and their jobs, blind review pairs and ratings, the pair-signing key."""
    db.executescript(_SUITES_SQL)


def _m5_owner_lease(db: Database) -> None:
    """The owner's lease: renewed every HEARTBEAT_S by the owning process, so a job whose
    owner is gone is found whatever host name it had (a restarted container gets a new one)."""
    db["jobs"].add_column("owner_heartbeat_at", str)


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    apply: Callable[[Database], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", _m1_initial),
    Migration(2, "process_ownership", _m2_process_ownership),
    Migration(3, "retention_and_cost", _m3_retention_and_cost),
    Migration(4, "suites_and_ratings", _m4_suites_and_ratings),
    Migration(5, "owner_lease", _m5_owner_lease),
)
LATEST = MIGRATIONS[-1].number


def schema_version(db: Database) -> int:
    """The highest migration recorded in ``db`` (0 for a new, empty file)."""
    if not db[MIGRATIONS_TABLE].exists():
        return 0
    row = db.execute(f"SELECT max(number) FROM {MIGRATIONS_TABLE}").fetchone()
    return int(row[0] or 0)


def _check_not_newer(db: Database, version: int) -> None:
    if version > LATEST:
        raise DatabaseTooNew(
            f"the job database {db_label(db)} has schema version {version}, but this LipSync "
            f"Lab only knows versions up to {LATEST}: it was written by a newer release. "
            f"Upgrade LipSync Lab, or set LIPSYNC_DATA_DIR to another folder to keep a "
            f"separate history.")


def migrate(db: Database, *, target: int | None = None) -> list[int]:
    """Apply every pending migration up to ``target`` (default: the latest), in order.

    Returns the numbers applied (empty when the file was already current). Raises
    :class:`DatabaseTooNew` when the file has migrations this code does not know.
    ``target`` exists for tests that need a file as an older release left it.
    """
    goal = LATEST if target is None else target
    if not 0 <= goal <= LATEST:
        raise ValueError(f"target must be between 0 and {LATEST}, got {goal}")
    version = schema_version(db)
    _check_not_newer(db, version)
    if version >= goal:
        return []
    applied: list[int] = []
    with write_transaction(db):
        db.execute(f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                   "number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        version = schema_version(db)  # again, under the write lock: another process may have won
        _check_not_newer(db, version)
        for migration in MIGRATIONS:
            if version < migration.number <= goal:
                migration.apply(db)
                db[MIGRATIONS_TABLE].insert({
                    "number": migration.number, "name": migration.name,
                    "applied_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                })
                applied.append(migration.number)
    if applied:
        log.info("migrated %s to schema %d (applied %s)", db_label(db), goal, applied)
    return applied


def open_db(path: str | os.PathLike[str] | None = None, *,
            busy_timeout_s: float = BUSY_TIMEOUT_S) -> Database:
    """Open (creating if needed) the job database and bring its schema up to date.

    ``path`` defaults to ``$LIPSYNC_DATA_DIR/jobs.db``. Raises :class:`DatabaseTooNew` for a
    file from a newer version and :class:`StorageUnavailable` when the folder or file cannot
    be used.
    """
    target = os.fspath(path) if path is not None else os.fspath(default_db_path())
    db = connect(target, busy_timeout_s=busy_timeout_s)
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def prepare(db: Database, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Database:
    """Configure and migrate a Database made elsewhere (e.g. ``Database(memory=True)``)."""
    configure(db, busy_timeout_s=busy_timeout_s)
    migrate(db)
    return db
