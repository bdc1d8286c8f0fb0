"""Values as the job database stores them: ids, timestamps, text, JSON, paths and rows.

- Job ids are ``YYYYMMDD-HHMMSSmmm-xxxxxxxx`` (UTC creation time to the millisecond, then 8
  random ``[0-9a-z]``): sortable, URL-safe, and checked against :data:`JOB_ID_RE` before any
  lookup or path is built from one.
- Timestamps are UTC ISO-8601 text with microseconds, so text order is time order.
- Text is stored as valid UTF-8: lone surrogates (``os.fsdecode`` of undecodable bytes)
  become U+FFFD. File paths keep their exact bytes as hex in ``raw_path_hex`` when the
  display text is lossy.
- JSON columns are written with ``ensure_ascii=True`` (any str, surrogates included, round
  trips) and ``allow_nan=False`` (NaN/inf become null, so SQLite's JSON functions accept it).
- Filters become a WHERE clause of fixed fragments with every value bound as a parameter.
- A job's owner is (pid, process create_time, host name) of the process running it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import socket
import string
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
from sqlite_utils import Database

from pipeline.weights import file_sha256
from storage.db import InvalidJobId

STATUSES = ("queued", "running", "succeeded", "failed", "interrupted", "cancelled")
ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "interrupted", "cancelled")
JOB_ID_RE = re.compile(r"[0-9]{8}-[0-9]{9}-[0-9a-z]{8}", re.ASCII)
_ID_ALPHABET = string.digits + string.ascii_lowercase
JSON_COLUMNS = ("options", "outputs", "facts")


def new_job_id(now: datetime) -> str:
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S%f")[:-3]  # ms resolution
    return f"{stamp}-{''.join(secrets.choice(_ID_ALPHABET) for _ in range(8))}"


def unique_id(db: Database, table: str, now: datetime) -> str:
    """A :func:`new_job_id` not yet an ``id`` of ``table`` (a table of the schema, never user
    text); call it inside the write transaction that inserts the row."""
    new_id = new_job_id(now)
    while db.execute(f"SELECT 1 FROM {table} WHERE id = ?", [new_id]).fetchone():
        new_id = new_job_id(now)
    return new_id


def check_job_id(job_id: Any) -> str:
    """Return ``job_id`` if it is well formed, else raise :class:`InvalidJobId`."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        shown = repr(job_id) if len(repr(job_id)) <= 80 else repr(job_id)[:77] + "..."
        raise InvalidJobId(f"{shown} is not a job id (expected e.g. 20250501-120000123-ab12cd34)")
    return job_id


def iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


def parse_bound(value: Any, *, end: bool = False) -> datetime:
    """A filter bound from a datetime, date or ISO text; naive means UTC. A bare date as an
    ``end`` bound means the end of that day (the next midnight)."""
    if isinstance(value, datetime):
        return parse_iso(value.isoformat())
    if isinstance(value, date):
        day = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                day = date.fromisoformat(text)
            else:
                return parse_iso(text)
        except ValueError as exc:
            raise ValueError(f"not a date or ISO time: {value[:60]!r} (use e.g. 2025-05-01 "
                             f"or 2025-05-01T13:00)") from exc
    else:
        raise ValueError(f"not a date or time: {value!r}")
    start = datetime.combine(day, time(0), tzinfo=timezone.utc)
    return start + timedelta(days=1) if end else start


def clean_text(value: Any) -> str | None:
    """``value`` as valid UTF-8 text (None stays None); undecodable bytes become U+FFFD."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    text = str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, os.PathLike)):
        return display_path(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return repr(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=True, allow_nan=False, sort_keys=True, default=_json_default)
    except ValueError:
        return json.dumps(_finite(json.loads(json.dumps(value, default=_json_default))),
                          ensure_ascii=True, allow_nan=False, sort_keys=True)


def path_bytes(path: str | bytes | os.PathLike[Any]) -> bytes:
    """The exact bytes of a path (str from ``os.fsdecode`` keeps them as surrogates)."""
    raw = os.fspath(path)
    if isinstance(raw, bytes):
        return raw
    try:
        return os.fsencode(raw)
    except UnicodeEncodeError:
        return raw.encode("utf-8", "surrogatepass")


def display_path(path: str | bytes | os.PathLike[Any]) -> str:
    return path_bytes(path).decode("utf-8", "replace")


def input_row(role: str, spec: Any, *, hash_inputs: bool) -> dict[str, Any]:
    """A ``job_inputs`` row (without job_id) from a path or a dict with ``path``/``name``."""
    spec = dict(spec) if isinstance(spec, Mapping) else {"path": spec}
    if spec.get("path") is None and spec.get("name") is None:
        raise ValueError(f"input {role!r} needs a path or a name")
    raw = path_bytes(spec["path"] if spec.get("path") is not None else spec["name"])
    display = raw.decode("utf-8", "replace")
    name = spec.get("name")
    name = display_path(name) if name is not None else os.path.basename(raw).decode("utf-8", "replace")
    sha, size = spec.get("sha256"), spec.get("size_bytes")
    if hash_inputs and spec.get("path") is not None and os.path.isfile(raw):
        size = os.path.getsize(raw) if size is None else size
        sha = file_sha256(raw) if sha is None else sha
    return {"role": clean_text(role), "name": name, "path": display if spec.get("path") is not None else None,
            "raw_path_hex": raw.hex() if display.encode("utf-8") != raw else None,
            "sha256": clean_text(sha), "size_bytes": None if size is None else int(size),
            "probe_json": dumps(spec.get("probe") or {})}


def score_row(score: Mapping[str, Any]) -> dict[str, Any]:
    """A ``job_scores`` row (without job_id/recorded_at); a null value needs a reason."""
    metric = clean_text(score.get("metric"))
    if not metric:
        raise ValueError(f"a score needs a metric name, got {score!r:.80}")
    value, reason = score.get("value"), clean_text(score.get("reason"))
    if value is not None:
        value = float(value)
        if not math.isfinite(value):
            value, reason = None, reason or f"not a finite number ({value})"
    if value is None and not reason:
        raise ValueError(f"score {metric!r} has no value: give the reason it is missing")
    return {"metric": metric, "value": value, "reason": reason,
            "convention_json": dumps(score.get("convention") or {})}


DEVICE_COLUMNS = ("device", "cpu_model", "cpu_count", "gpu_model", "peak_rss_mb", "peak_gpu_mb")


def device_row(facts: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {k: facts.get(k) for k in DEVICE_COLUMNS}
    for key in ("device", "cpu_model", "gpu_model"):
        row[key] = clean_text(row[key])
    for key in ("peak_rss_mb", "peak_gpu_mb"):
        row[key] = None if row[key] is None else float(row[key])
    row["cpu_count"] = None if row["cpu_count"] is None else int(row["cpu_count"])
    row["extra_json"] = dumps({k: v for k, v in facts.items() if k not in DEVICE_COLUMNS})
    return row


def job_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``jobs`` row as returned by JobStore: JSON decoded, ``files_gone`` a bool."""
    job = {k: v for k, v in row.items() if not k.endswith("_json")}
    for name in JSON_COLUMNS:
        job[name] = json.loads(row[f"{name}_json"] or "{}")
    job["files_gone"] = bool(row.get("files_gone"))
    return job


def score_record(row: Mapping[str, Any]) -> dict[str, Any]:
    rec = {k: v for k, v in row.items() if k != "convention_json"}
    rec["convention"] = json.loads(row["convention_json"] or "{}")
    return rec


def device_record(row: Mapping[str, Any]) -> dict[str, Any]:
    rec = {k: row[k] for k in DEVICE_COLUMNS}
    rec.update(json.loads(row["extra_json"] or "{}"))
    return rec


def inputs_for(db: Database, job_ids: Iterable[str], *, chunk: int = 500) -> dict[str, list[dict[str, Any]]]:
    """``job_inputs`` rows per job id, probe decoded, roles in name order."""
    ids = list(job_ids)
    out: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        for row in db.query(
                f"SELECT * FROM job_inputs WHERE job_id IN ({','.join('?' * len(part))}) "
                "ORDER BY job_id, role", part):
            rec = {k: v for k, v in row.items() if k not in ("job_id", "probe_json")}
            rec["probe"] = json.loads(row["probe_json"] or "{}")
            out.setdefault(row["job_id"], []).append(rec)
    return out


def where_clause(*, status: Any = None, model: str | None = None, since: Any = None, until: Any = None,
             text: str | None = None, source: str | None = None, user: str | None = None
             ) -> tuple[str, list[Any]]:
    """A WHERE clause built only from fixed fragments; every value is a bound parameter."""
    clauses: list[str] = []
    params: list[Any] = []
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        for s in wanted:
            if s not in STATUSES:
                raise ValueError(f"unknown status {s!r}: choose from {', '.join(STATUSES)}")
        clauses.append(f"status IN ({','.join('?' * len(wanted))})" if wanted else "0")
        params += wanted
    if model is not None:
        clauses.append("coalesce(model_used, model_requested) = ?")
        params.append(clean_text(model))
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(iso(parse_bound(since)))
    if until is not None:
        clauses.append("created_at < ?")
        params.append(iso(parse_bound(until, end=True)))
    if text:
        clauses.append("EXISTS (SELECT 1 FROM job_inputs i WHERE i.job_id = jobs.id "
                       "AND instr(lower(i.name), lower(?)) > 0)")
        params.append(clean_text(text))
    for column, value in (("source", source), ("user", user)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(clean_text(value))
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def dir_bytes(path: Path) -> int | None:
    """Total bytes of the regular files under ``path`` (symlinks not followed); None if absent."""
    if not path.is_dir():
        return None
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


HEARTBEAT_S = 30.0  # how often a process renews the lease on the jobs (and work folder) it owns
LEASE_S = 4 * HEARTBEAT_S  # an owner not heard of for this long, on another host, is gone

_OWNER: dict[int, tuple[int, float, str]] = {}


def self_owner() -> tuple[int, float, str]:
    """(pid, create_time, host) of this process; recomputed after a fork."""
    pid = os.getpid()
    if pid not in _OWNER:
        _OWNER[pid] = process_owner(pid)
    return _OWNER[pid]


def process_owner(pid: int) -> tuple[int, float, str]:
    try:
        return pid, psutil.Process(pid).create_time(), socket.gethostname()
    except psutil.NoSuchProcess as exc:
        raise ValueError(f"no live process with pid {pid} to own the job") from exc


def owner_alive(pid: int | None, create_time: float | None, host: str | None, *,
                heartbeat: datetime | None = None, now: datetime | None = None) -> bool:
    """Whether the recorded owner of a job (or a work folder) may still be running it.

    On this host the process table decides: False when no process has that pid with that
    start time (a zombie counts as gone), True for one we may not inspect. Another host's
    processes cannot be seen (nor can those of this container before a restart, which gave
    it a new host name), so there the owner's lease decides: alive while its last
    ``heartbeat`` is less than LEASE_S old (``now``: the caller's clock). False when no
    owner was recorded."""
    if pid is None:
        return False
    if host != socket.gethostname():
        if heartbeat is None:
            return False
        return ((now or datetime.now(timezone.utc)) - heartbeat).total_seconds() < LEASE_S
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.01
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
