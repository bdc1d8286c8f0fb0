"""Hostile text (quotes, %, _, ;, SQL keywords, very long strings, non-UTF-8 file names)
is stored and queried as data, never as SQL, on a real SQLite file."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from storage.db import InvalidJobId
from storage.jobs import JobStore

HOSTILE = [
    "O'Brien \"quoted\" take.mp4",
    "100%_done.mp4",
    "plain.mp4",
    "a; DROP TABLE jobs; --.mp4",
    "' OR '1'='1",
    "SELECT * FROM job_inputs WHERE 1=1",
    "back\\slash\ttab\nnewline.mp4",
    "видео 🎬 ünïcode.mp4",
    "%",
    "_",
    "L" * 20_000 + ".mp4",
]


@pytest.fixture
def hostile_store(tmp_path: Path) -> tuple[JobStore, dict[str, str]]:
    store = JobStore(tmp_path / "jobs.db")
    ids = {}
    for name in HOSTILE:
        job_id = store.create(source="api", inputs={"video": {"path": f"/uploads/{name}" if "/" not in name else name,
                                                              "name": name}},
                              options={"note": name}, model_requested=name, user=name, hash_inputs=False)
        ids[name] = job_id
    yield store, ids
    store.close()



def _raw_path(rec: dict) -> bytes:
    """The exact bytes of a stored input's path (``raw_path_hex`` where the text was lossy)."""
    return bytes.fromhex(rec["raw_path_hex"]) if rec.get("raw_path_hex") else rec["path"].encode("utf-8")

def test_hostile_names_round_trip_exactly(hostile_store: tuple[JobStore, dict[str, str]]) -> None:
    store, ids = hostile_store
    for name, job_id in ids.items():
        job = store.get(job_id)
        assert job["inputs"][0]["name"] == name
        assert job["options"] == {"note": name} and job["model_requested"] == name and job["user"] == name
    assert len(store.list(limit=None)) == len(HOSTILE)


def test_text_filter_is_a_literal_substring(hostile_store: tuple[JobStore, dict[str, str]]) -> None:
    store, ids = hostile_store
    for name in HOSTILE:
        found = {j["id"] for j in store.list(text=name, limit=None)}
        expected = {ids[n] for n in HOSTILE if name.lower() in n.lower()}
        assert found == expected, name[:40]
    # % and _ are not wildcards
    assert {j["id"] for j in store.list(text="%")} == {ids["100%_done.mp4"], ids["%"]}
    assert {j["id"] for j in store.list(text="_")} == {ids["100%_done.mp4"], ids["_"],
                                                       ids["SELECT * FROM job_inputs WHERE 1=1"]}
    assert store.list(text="%%") == [] and len(store.list(limit=None, text="' OR 1=1 --")) == 0
    assert len(store.list(limit=None, text="o'brien")) == 1  # case-insensitive, quote and all


def test_other_filters_bind_values(hostile_store: tuple[JobStore, dict[str, str]]) -> None:
    store, ids = hostile_store
    for name in HOSTILE:
        assert [j["id"] for j in store.list(model=name)] == [ids[name]]
        assert [j["id"] for j in store.list(user=name)] == [ids[name]]
    assert store.list(model="x' OR '1'='1") == [] and store.list(model="%") != []
    assert [j["id"] for j in store.list(user="%")] == [ids["%"]]
    with pytest.raises(ValueError, match="unknown status"):
        store.list(status="succeeded' OR '1'='1")
    with pytest.raises(ValueError, match="not a date or ISO time"):
        store.list(since="2025-01-01'; DROP TABLE jobs; --")
    for bad in ("'; DROP TABLE jobs; --", "../../etc/passwd", "20250101-000000000-AAAAAAAA", "x" * 10_000):
        with pytest.raises(InvalidJobId):
            store.get(bad)
        with pytest.raises(InvalidJobId):
            store.job_dir(bad)
    assert len(store.list(limit=None)) == len(HOSTILE)  # every table still there, every row too
    with store.connection() as db:
        assert set(db.table_names()) >= {"jobs", "job_inputs", "job_stages", "job_scores", "job_devices"}


def test_non_utf8_file_names_keep_their_bytes(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path)
    raw = folder + b"/caf\xe9 \xff\xfe 'x'; --.wav"  # Latin-1 and invalid bytes: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"RIFF....WAVE")
    as_str = os.fsdecode(raw)  # what a str-based caller holds: surrogate escapes
    with JobStore(tmp_path / "jobs.db") as store:
        by_bytes = store.create(source="cli", inputs={"audio": raw})
        by_str = store.create(source="cli", inputs={"audio": as_str}, options={"src": as_str})
        for job_id in (by_bytes, by_str):
            rec = store.get(job_id)["inputs"][0]
            assert rec["name"] == "caf\ufffd \ufffd\ufffd 'x'; --.wav"  # valid UTF-8 for display
            assert _raw_path(rec) == raw  # ... and the exact bytes
            assert rec["sha256"] == hashlib.sha256(b"RIFF....WAVE").hexdigest() and rec["size_bytes"] == 12
            with open(_raw_path(rec), "rb") as fh:
                assert fh.read() == b"RIFF....WAVE"
        assert store.get(by_str)["options"] == {"src": as_str}  # JSON keeps the surrogates
        assert len(store.list(limit=None, text="caf\ufffd")) == 2 and len(store.list(limit=None, text="'x'; --")) == 2
    with sqlite3.connect(tmp_path / "jobs.db") as conn:  # stored text is valid UTF-8
        names = conn.execute("SELECT CAST(name AS BLOB) FROM job_inputs").fetchall()
        for (blob,) in names:
            blob.decode("utf-8")
    conn.close()
