"""Blind review pairs and their ratings in the job database.

A review pair is two succeeded jobs of the same suite run and clip under different settings,
issued to one reviewer with the sides as shown (``job_a`` left, ``job_b`` right). The table's
UNIQUE (reviewer, job_lo, job_hi) means a reviewer is never issued the same two results
twice; ``ratings.pair_id`` UNIQUE means a pair is rated at most once. A rating is checked and
written in one ``BEGIN IMMEDIATE`` transaction, so two reviewers (or one reviewer's two
tabs) rating at once never lose nor duplicate a rating.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from storage.db import StorageError
from storage.jobs import JobStore
from storage.records import clean_text, iso

SECRET_NAME = "review_pair_key"
SECRET_BYTES = 32
RATING_COLUMNS = ["id", "pair_id", "reviewer", "job_a", "job_b", "setting_a", "setting_b", "model_a",
                  "model_b", "sync", "quality", "opinion_a", "opinion_b", "note", "created_at"]


class ReviewError(StorageError, ValueError):
    """Base of the review refusals below."""


class UnknownPair(ReviewError):
    """No pair with this id was issued (or it was issued to another reviewer)."""


class AlreadyRated(ReviewError):
    """This pair has been rated already."""


class PairTaken(ReviewError):
    """The reviewer was already issued these two results (drawn twice at once)."""


def pair_key(store: JobStore) -> bytes:
    """The database's key for signing pair ids (made once, kept in ``app_secrets``)."""
    with store.connection() as db:
        row = db.execute("SELECT value FROM app_secrets WHERE name = ?", [SECRET_NAME]).fetchone()
    if row is None:
        with store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO app_secrets (name, value) VALUES (?, ?)",
                       [SECRET_NAME, secrets.token_hex(SECRET_BYTES)])
        with store.connection() as db:
            row = db.execute("SELECT value FROM app_secrets WHERE name = ?", [SECRET_NAME]).fetchone()
    return bytes.fromhex(row[0])


def candidates(store: JobStore, *, suite: str | None = None) -> pd.DataFrame:
    """Succeeded suite jobs whose result file is recorded: run_id, suite, pair, setting,
    model, job_id, output_path."""
    where, params = ("AND r.suite = ?", [suite]) if suite else ("", [])
    with store.connection() as db:
        rows = db.execute(
            "SELECT s.run_id, r.suite, s.pair, s.setting, s.model, s.job_id, j.output_path "
            "FROM suite_jobs s JOIN jobs j ON j.id = s.job_id JOIN suite_runs r ON r.id = s.run_id "
            f"WHERE j.status = 'succeeded' AND NOT j.files_gone AND j.output_path IS NOT NULL {where} "
            "ORDER BY s.run_id, s.position", params).fetchall()
    return pd.DataFrame(rows, columns=["run_id", "suite", "pair", "setting", "model", "job_id", "output_path"])


def issued_to(store: JobStore, reviewer: str) -> set[tuple[str, str]]:
    """(job_lo, job_hi) of every pair issued to ``reviewer``."""
    with store.connection() as db:
        rows = db.execute("SELECT job_lo, job_hi FROM review_pairs WHERE reviewer = ?", [reviewer]).fetchall()
    return {(a, b) for a, b in rows}


def pending_pair(store: JobStore, reviewer: str) -> dict[str, Any] | None:
    """The reviewer's oldest issued pair not rated yet (shown again rather than a new one),
    with each side's result file as ``path_a`` / ``path_b``."""
    with store.connection() as db:
        row = next(db.query(
            "SELECT p.*, a.output_path AS path_a, b.output_path AS path_b FROM review_pairs p "
            "LEFT JOIN ratings r ON r.pair_id = p.id JOIN jobs a ON a.id = p.job_a JOIN jobs b ON b.id = p.job_b "
            "WHERE p.reviewer = ? AND r.id IS NULL AND NOT a.files_gone AND NOT b.files_gone "
            "ORDER BY p.created_at, p.id LIMIT 1", [reviewer]), None)
    return dict(row) if row is not None else None


def comparison_counts(store: JobStore) -> pd.DataFrame:
    """Pairs issued so far per (job_lo, job_hi): the balance of future draws counts these."""
    with store.connection() as db:
        rows = db.execute("SELECT job_lo, job_hi, count(*) FROM review_pairs GROUP BY job_lo, job_hi").fetchall()
    return pd.DataFrame(rows, columns=["job_lo", "job_hi", "issued"])


def issue_pair(store: JobStore, *, token: str, reviewer: str, run_id: str, pair: str, job_a: str,
               job_b: str) -> dict[str, Any]:
    """Record a pair issued to ``reviewer`` (``job_a`` shown left); :class:`PairTaken` when the
    reviewer already has these two results."""
    lo, hi = sorted((job_a, job_b))
    row = {"id": token, "reviewer": clean_text(reviewer), "run_id": run_id, "pair": clean_text(pair),
           "job_a": job_a, "job_b": job_b, "job_lo": lo, "job_hi": hi, "created_at": iso(store.now())}
    try:
        with store.transaction() as db:
            db["review_pairs"].insert(row)
    except sqlite3.IntegrityError as exc:
        raise PairTaken(f"reviewer {reviewer!r} already has these two results") from exc
    return row


def submit(store: JobStore, *, token: str, reviewer: str, answers: Mapping[str, Any]) -> int:
    """Rate the pair ``token`` issued to ``reviewer``: checks and insert in one transaction.
    Returns the rating's id; raises :class:`UnknownPair` or :class:`AlreadyRated`."""
    with store.transaction() as db:
        pair = db.execute(
            "SELECT p.job_a, p.job_b, a.setting, b.setting FROM review_pairs p "
            "JOIN suite_jobs a ON a.job_id = p.job_a JOIN suite_jobs b ON b.job_id = p.job_b "
            "WHERE p.id = ? AND p.reviewer = ?", [token, reviewer]).fetchone()
        if pair is None:
            raise UnknownPair("no such review pair was issued to you: ask /review_next for one")
        if db.execute("SELECT 1 FROM ratings WHERE pair_id = ?", [token]).fetchone():
            raise AlreadyRated("this pair has been rated already: ask /review_next for the next one")
        cur = db.execute(
            "INSERT INTO ratings (pair_id, reviewer, job_a, job_b, setting_a, setting_b, sync, quality, "
            "opinion_a, opinion_b, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [token, clean_text(reviewer), pair[0], pair[1], pair[2], pair[3], answers["sync"],
             answers["quality"], answers.get("opinion_a"), answers.get("opinion_b"),
             clean_text(answers.get("note")), iso(store.now())])
        return int(cur.lastrowid)


def ratings_frame(store: JobStore, *, metrics: Sequence[str] = (), suite: str | None = None) -> pd.DataFrame:
    """Every rating (of one suite when given) with each side's model and the ``metrics``
    values as ``<metric>_a`` / ``<metric>_b``."""
    where, params = ("WHERE p.run_id IN (SELECT id FROM suite_runs WHERE suite = ?)", [suite]) if suite else ("", [])
    with store.connection() as db:
        rows = db.execute(
            "SELECT r.id, r.pair_id, r.reviewer, r.job_a, r.job_b, r.setting_a, r.setting_b, sa.model, "
            "sb.model, r.sync, r.quality, r.opinion_a, r.opinion_b, r.note, r.created_at FROM ratings r "
            "JOIN review_pairs p ON p.id = r.pair_id JOIN suite_jobs sa ON sa.job_id = r.job_a "
            f"JOIN suite_jobs sb ON sb.job_id = r.job_b {where} ORDER BY r.id", params).fetchall()
        frame = pd.DataFrame(rows, columns=RATING_COLUMNS)
        for metric in metrics:
            values = dict(db.execute("SELECT job_id, value FROM job_scores WHERE metric = ?", [metric]).fetchall())
            for side in ("a", "b"):
                frame[f"{metric}_{side}"] = pd.to_numeric(frame[f"job_{side}"].map(values))
    return frame
