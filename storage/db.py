"""The job database: one SQLite file at ``$LIPSYNC_DATA_DIR/jobs.db``, opened through sqlite-utils.

Every connection runs in WAL mode (readers never block the writer), with a busy timeout
(a writer waits for another writer instead of failing) and foreign keys on. Every write
goes through :func:`write_transaction`, which takes the write lock up front with
``BEGIN IMMEDIATE`` so two connections never deadlock upgrading a read lock to a write lock.
``synchronous=NORMAL`` in WAL mode loses no committed transaction when a process crashes
(only an OS crash or power cut can drop the last few).

Opening a file through ``storage.migrations.open_db`` applies any pending migrations; opening a file
written by a newer LipSync Lab raises :class:`DatabaseTooNew`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database

from storage.errors import StorageError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "LIPSYNC_DATA_DIR"
DEFAULT_DATA_DIR = "data"  # relative to the working directory
DB_FILENAME = "jobs.db"
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for the write lock before StorageBusy
WAL_RETRY_S = 0.005  # first pause before retrying a switch to WAL that met another's (doubles, to 0.5 s)
RETENTION_DAYS_ENV = "LIPSYNC_RETENTION_DAYS"  # delete job files older than this many days
RETENTION_MB_ENV = "LIPSYNC_RETENTION_MB"  # ... and the oldest beyond this many MiB in total


class StorageUnavailable(StorageError):
    """The data folder or database file cannot be used (read-only, full, missing, corrupt)."""


class StorageBusy(StorageUnavailable):
    """Another process held the database's write lock for longer than the busy timeout."""


class DatabaseTooNew(StorageError):
    """The database was written by a newer LipSync Lab with migrations this code lacks."""


class JobNotFound(StorageError, KeyError):
    """No job has this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "job not found"


class InvalidJobId(StorageError, ValueError):
    """A string that is not a well-formed job id (ids are checked before any lookup or path)."""


class InvalidJobState(StorageError):
    """The job is not in a state that allows this change (e.g. finishing a cancelled job)."""


def data_dir() -> Path:
    """``$LIPSYNC_DATA_DIR`` when set and non-empty, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def default_db_path() -> Path:
    return data_dir() / DB_FILENAME


def retention_from_env() -> dict[str, float | None]:
    """``{"max_age_days", "max_total_mb"}`` for ``JobStore.apply_retention`` from
    ``$LIPSYNC_RETENTION_DAYS`` / ``$LIPSYNC_RETENTION_MB`` (unset or empty: no limit)."""
    out: dict[str, float | None] = {}
    for key, env in (("max_age_days", RETENTION_DAYS_ENV), ("max_total_mb", RETENTION_MB_ENV)):
        raw = os.environ.get(env, "").strip()
        try:
            out[key] = float(raw) if raw else None
        except ValueError:
            out[key] = -1.0
        if out[key] is not None and not out[key] >= 0:  # type: ignore[operator]
            raise ValueError(f"{env}={raw!r} is not a non-negative number")
    return out


_AVAILABILITY_WORDS = ("locked", "busy", "readonly", "read-only", "full", "no space",
                       "not a database", "malformed", "unable to open", "disk i/o")


def _is_availability_error(exc: BaseException) -> bool:
    """True for errors about the file or folder (not about the SQL itself)."""
    text = str(exc).lower()
    return isinstance(exc, OSError) or any(word in text for word in _AVAILABILITY_WORDS)


def _unavailable(exc: BaseException, path: str) -> StorageError:
    """Turn a low-level sqlite3/OS error into a named error that says what to do."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StorageBusy(
            f"the job database {path} stayed locked by another process for longer than the "
            f"busy timeout; retry, or look for a stuck process holding it")
    if "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
        hint = f"make the folder writable or set {DATA_DIR_ENV} to a writable folder"
    elif "full" in text or "no space" in text:
        hint = "free disk space, or lower the retention limits (python -m storage prune)"
    elif "disk i/o" in text or getattr(exc, "errno", None) in (errno.EFBIG, errno.EIO):
        hint = ("a write to the disk failed: the disk may be full, over a file size limit or "
                "failing; free disk space or check the device")
    elif "not a database" in text or "malformed" in text:
        hint = f"move the damaged file aside or set {DATA_DIR_ENV} to another folder"
    else:
        hint = f"check that the folder exists and is writable, or set {DATA_DIR_ENV}"
    return StorageUnavailable(f"cannot use the job database {path}: {exc}; {hint}")


def configure(db: Database, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Database:
    """Apply the connection settings every LipSync Lab connection uses; returns ``db``."""
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    db.execute("PRAGMA foreign_keys = ON")
    if not db.memory:
        _enable_wal(db, busy_timeout_s)
        db.execute("PRAGMA synchronous = NORMAL")
    return db


def _enable_wal(db: Database, timeout_s: float) -> None:
    """Switch to WAL, retrying while other connections race to do the same on a fresh file.

    The switch needs an exclusive lock, and SQLite answers "database is locked" at once,
    without waiting on the busy timeout, to a connection that would deadlock with another
    one upgrading its lock (measured: 2 of 60 rounds of 6 threads opening one fresh file).
    """
    deadline = time.monotonic() + timeout_s
    delay = WAL_RETRY_S
    while True:
        try:
            db.enable_wal()
            return
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.5)


def connect(path: str | os.PathLike[str], *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Database:
    """One configured connection to an existing or new file, without migrating it.

    The connection may be closed from another thread (``check_same_thread=False``) but is
    meant to be used by one thread at a time; :class:`storage.jobs.JobStore` keeps one per
    thread.
    """
    path = os.fspath(path)
    try:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False)
        return configure(Database(conn), busy_timeout_s=busy_timeout_s)
    except (sqlite3.Error, OSError) as exc:
        raise _unavailable(exc, path) from exc


def db_label(db: Database) -> str:
    """The file behind a connection, for messages (``:memory:`` for in-memory ones)."""
    try:
        row = db.execute("PRAGMA database_list").fetchone()
    except sqlite3.Error:
        return "<closed>"
    return (row[2] if row and row[2] else ":memory:")


@contextlib.contextmanager
def write_transaction(db: Database) -> Iterator[Database]:
    """One write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error.

    Taking the write lock first means a writer waits (up to the busy timeout) instead of
    failing with "database is locked" when it later tries to upgrade a read lock. sqlite3
    and OS errors leave as :class:`StorageUnavailable` / :class:`StorageBusy`.
    """
    if db.conn.in_transaction:
        raise InvalidJobState("a write transaction is already open on this connection")
    try:
        db.conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise _unavailable(exc, db_label(db)) from exc
    try:
        yield db
        db.conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        _rollback(db)
        if _is_availability_error(exc):
            raise _unavailable(exc, db_label(db)) from exc
        raise
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: Database) -> None:
    if db.conn.in_transaction:
        try:
            db.conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("rollback failed")


def integrity_check(db: Database) -> list[str]:
    """``PRAGMA integrity_check`` rows; ``["ok"]`` for a healthy file."""
    return [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
