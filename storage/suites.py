"""Suite runs in the job database: a run, the jobs it made (pair x setting), its summary,
and the run's jobs as one pandas row each (``run_jobs_frame``) for the maths in eval/.

Every write is one ``BEGIN IMMEDIATE`` transaction on the JobStore's connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from storage.db import StorageError
from storage.jobs import JobStore
from storage.records import check_job_id, clean_text, dumps, iso, unique_id

RUN_STATUSES = ("running", "finished", "interrupted")
JOB_COLUMNS = ["job_id", "pair", "setting", "model", "position", "status", "error_type", "error_message",
               "run_s", "output_duration_s", "output_path", "model_used"]


class SuiteRunNotFound(StorageError, KeyError):
    """No suite run has this id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "suite run not found"


def create_run(store: JobStore, *, suite: str, definition: Mapping[str, Any], total_jobs: int,
               source: str, user: str | None = None) -> str:
    """Record a new running suite run; returns its id (same form as a job id)."""
    now = store.now()
    with store.transaction() as db:
        run_id = unique_id(db, "suite_runs", now)
        db["suite_runs"].insert({"id": run_id, "suite": clean_text(suite), "definition_json": dumps(definition),
                                 "status": "running", "source": source, "user": clean_text(user),
                                 "created_at": iso(now), "total_jobs": int(total_jobs)})
    return run_id


def add_job(store: JobStore, run_id: str, job_id: str, *, pair: str, setting: str, model: str,
            position: int) -> None:
    """Link a job (already created by the JobStore) to its run, pair and setting."""
    check_job_id(job_id)
    with store.transaction() as db:
        db["suite_jobs"].insert({"run_id": run_id, "job_id": job_id, "pair": clean_text(pair),
                                 "setting": clean_text(setting), "model": clean_text(model),
                                 "position": int(position)})


def finish_run(store: JobStore, run_id: str, *, summary: Mapping[str, Any],
               status: str = "finished") -> None:
    """running -> finished (or interrupted), with the run's summary as JSON."""
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    with store.transaction() as db:
        cur = db.execute("UPDATE suite_runs SET status = ?, finished_at = ?, summary_json = ? WHERE id = ?",
                         [status, iso(store.now()), dumps(summary), run_id])
        if cur.rowcount != 1:
            raise SuiteRunNotFound(f"no suite run with id {run_id!r}")


def _run_record(row: Mapping[str, Any]) -> dict[str, Any]:
    rec = {k: v for k, v in row.items() if not k.endswith("_json")}
    rec["definition"] = json.loads(row["definition_json"] or "{}")
    rec["summary"] = json.loads(row["summary_json"] or "{}")
    return rec


def get_run(store: JobStore, run_id: str) -> dict[str, Any]:
    """One run with its definition and summary."""
    with store.connection() as db:
        row = next(db.query("SELECT * FROM suite_runs WHERE id = ?", [str(run_id)]), None)
    if row is None:
        raise SuiteRunNotFound(f"no suite run with id {str(run_id)[:40]!r}: see the Suites tab's runs")
    return _run_record(row)


def list_runs(store: JobStore, *, suite: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Runs newest first (of one suite when ``suite`` is given)."""
    where, params = ("WHERE suite = ?", [suite]) if suite else ("", [])
    with store.connection() as db:
        rows = list(db.query(f"SELECT * FROM suite_runs {where} ORDER BY created_at DESC, id DESC LIMIT ?",
                             [*params, int(limit)]))
    return [_run_record(r) for r in rows]


def previous_run(store: JobStore, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The latest finished run of the same suite created before ``run`` (a :func:`get_run`
    record), or None."""
    with store.connection() as db:
        row = next(db.query(
            "SELECT * FROM suite_runs WHERE suite = ? AND status = 'finished' AND created_at < ? "
            "ORDER BY created_at DESC LIMIT 1", [run["suite"], run["created_at"]]), None)
    return _run_record(row) if row is not None else None


def run_jobs_frame(store: JobStore, run_id: str) -> pd.DataFrame:
    """The run's jobs in run order: :data:`JOB_COLUMNS` and one column per scored metric."""
    with store.connection() as db:
        jobs = pd.DataFrame(db.execute(
            "SELECT s.job_id, s.pair, s.setting, s.model, s.position, j.status, j.error_type, "
            "j.error_message, j.run_s, j.output_duration_s, j.output_path, j.model_used "
            "FROM suite_jobs s JOIN jobs j ON j.id = s.job_id WHERE s.run_id = ? ORDER BY s.position",
            [run_id]).fetchall(), columns=JOB_COLUMNS)
        scores = pd.DataFrame(db.execute(
            "SELECT c.job_id, c.metric, c.value FROM job_scores c JOIN suite_jobs s ON s.job_id = c.job_id "
            "WHERE s.run_id = ?", [run_id]).fetchall(), columns=["job_id", "metric", "value"])
    if len(scores):
        wide = scores.pivot(index="job_id", columns="metric", values="value")
        jobs = jobs.merge(wide, left_on="job_id", right_index=True, how="left")
    for col in ("run_s", "output_duration_s"):
        jobs[col] = pd.to_numeric(jobs[col])
    return jobs
