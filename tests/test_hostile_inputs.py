"""The hostile / edge input corpus (tests/hostile_corpus.py) through the real /lipsync API.

One module-scoped ``python app.py`` server (baseline generator: no weights can exist here;
real ffmpeg, the real dlib tracker, a real SQLite history). The module-scoped
``corpus_outcomes`` fixture runs the whole corpus once; one test per case then says whether it
ended as expected: a correct output (probed) or a clear AppError naming the problem with no
traceback, recorded in SQLite with that outcome. A case whose encoder the ffmpeg build lacks
is a pytest skip. The checks that need the corpus to have run (a normal request still
succeeds; no job temp folder or partial output is left behind) take ``corpus_outcomes``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import hostile_corpus
from app_server import AppServer, start_app
from pipeline.media.probe import probe
from storage.jobs import JobStore

log = logging.getLogger(__name__)

BASELINE = "baseline"
CASE_TIMEOUT_S = 120.0  # client-side: no case may hang; the server's own job limit is below
JOB_TIMEOUT_S = "90"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> AppServer:
    tmp = tmp_path_factory.mktemp("hostile_app")
    (tmp / "tmp").mkdir()
    (tmp / "gradio").mkdir()
    srv = start_app(tmp, TMPDIR=str(tmp / "tmp"), GRADIO_TEMP_DIR=str(tmp / "gradio"),
                    LIPSYNC_JOB_TIMEOUT_S=JOB_TIMEOUT_S)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[hostile_corpus.Case]:
    return hostile_corpus.build_corpus(tmp_path_factory.mktemp("corpus"))


def _run_case(case: hostile_corpus.Case, client: Client, store: JobStore) -> tuple[str, str]:
    """(outcome, problem): outcome is "ok" or "<ErrorType>: message"; problem is "" when as expected."""
    before = {j["id"] for j in store.list(limit=None)}
    job = client.submit(handle_file(str(case.video)), handle_file(str(case.audio)), BASELINE,
                        case.options, api_name="/lipsync")
    try:
        video, _sbs, _scores, job_id = job.result(timeout=CASE_TIMEOUT_S)
        outcome, message = "ok", ""
    except AppError as exc:
        outcome, message, video, job_id = "error", str(exc), None, None
    except TimeoutError:
        job.cancel()
        return "hang", f"no answer within {CASE_TIMEOUT_S:.0f} s"
    new = [j for j in store.list(limit=None) if j["id"] not in before]
    if len(new) != 1:
        return outcome, f"expected exactly one new job in SQLite, found {len(new)}"
    record = store.get(new[0]["id"])
    if outcome == "ok":
        return "ok", _check_success(case, video, job_id, record)
    shown = message.splitlines()[0][:160]
    problems = []
    if case.expect_ok:
        problems.append(f"expected a result, got {shown}")
    else:
        if case.error_type not in message:
            problems.append(f"error type {case.error_type} not in {shown!r}")
        missing = [w for w in case.words if w.lower() not in message.lower()]
        if missing:
            problems.append(f"message lacks {missing}: {shown!r}")
    if "Traceback" in message:
        problems.append("message carries a traceback")
    if record["status"] != "failed" or record["error_type"] != (case.error_type or record["error_type"]) \
            or not record["error_message"]:
        problems.append(f"SQLite: status={record['status']} error_type={record['error_type']}")
    return shown, "; ".join(problems)


def _check_success(case: hostile_corpus.Case, video: str, job_id: str, record: dict[str, Any]) -> str:
    if not case.expect_ok:
        return f"expected {case.error_type}, got a result"
    if record["id"] != job_id or record["status"] != "succeeded":
        return f"SQLite: job {record['id']} status={record['status']} (API said {job_id})"
    try:
        info = probe(video)
        if info.video is None or info.video.codec != "h264" or info.audio is None:
            return f"output streams wrong: {info}"
        if case.check is not None:
            case.check(info, record)
    except AssertionError as exc:
        return str(exc)
    return ""


def case_params(cases: list[hostile_corpus.Case]) -> list[Any]:
    """One pytest param per case, named by it; a case the ffmpeg build cannot make is a skip."""
    return [pytest.param(c.name, id=c.name, marks=[pytest.mark.skip(reason=c.skip)] if c.skip else [])
            for c in cases]


PLAN = hostile_corpus.plan_corpus(Path("corpus")).cases  # names and skips only: no file is written


@pytest.fixture(scope="module")
def corpus_outcomes(corpus: list[hostile_corpus.Case], client: Client,
                    store: JobStore) -> dict[str, tuple[str, str]]:
    """Runs every case the build can make through /lipsync, in order: {name: (outcome, problem)}."""
    outcomes = {c.name: _run_case(c, client, store) for c in corpus if not c.skip}
    report = "\n".join(f"{name:55s} {outcome}" + (f"  <-- {problem}" if problem else "")
                       for name, (outcome, problem) in outcomes.items())
    log.info("hostile corpus outcomes:\n%s", report)
    return outcomes


def test_the_plan_is_the_built_corpus(corpus: list[hostile_corpus.Case]) -> None:
    assert len(PLAN) >= 25 and len({c.name for c in PLAN}) == len(PLAN)
    assert [(c.name, c.skip) for c in corpus] == [(c.name, c.skip) for c in PLAN]
    made = [p for c in corpus if not c.skip for p in (c.video, c.audio)]
    assert all(p.is_file() for p in made), [str(p) for p in made if not p.is_file()]


def test_a_missing_encoder_makes_its_case_a_skip() -> None:
    have = hostile_corpus.encoders() - {"libx265"}
    params = {p.values[0]: p.marks for p in case_params(hostile_corpus.plan_corpus(Path("c"), have).cases)}
    (mark,) = params["HEVC input"]
    assert mark.name == "skip" and mark.kwargs["reason"] == "ffmpeg build lacks encoder(s) libx265"
    assert params["10-bit video"] == []


@pytest.mark.parametrize("name", case_params(PLAN))
def test_hostile_case_ends_as_expected(name: str, corpus_outcomes: dict[str, tuple[str, str]]) -> None:
    outcome, problem = corpus_outcomes[name]
    assert problem == "", f"{name}: {outcome}: {problem}"


def test_normal_request_after_the_corpus_succeeds(corpus_outcomes: dict[str, tuple[str, str]], client: Client,
                                                  store: JobStore, face_mp4: Path, speech_wav: Path) -> None:
    video, _, _, job_id = client.predict(handle_file(str(face_mp4)), handle_file(str(speech_wav)),
                                         BASELINE, "{}", api_name="/lipsync")
    assert probe(video).duration_s == pytest.approx(3.0, abs=0.15)
    assert store.get(job_id)["status"] == "succeeded"


def test_no_temp_files_left_behind(corpus_outcomes: dict[str, tuple[str, str]], server: AppServer,
                                   store: JobStore) -> None:
    # job temp folders live in the app's per-process work folder (jobs/workspace.py); TMPDIR too
    work = server.data_dir / "work"
    assert [p for p in work.iterdir() if p.is_dir()], f"no per-process work folder in {work}"
    tmp = server.data_dir.parent / "tmp"
    # a job's run folder, or the scratch folder a generation worker's job runs in
    leftovers = [str(p) for p in [*work.glob("*/**/lipsync-job-*"), *work.glob("*/job-*"),
                                  *tmp.glob("lipsync*")]]
    assert leftovers == [], f"job temp folders left behind: {leftovers}"
    jobs = store.list(limit=None)
    assert len(jobs) >= len(corpus_outcomes) >= 25
    assert not [j["id"] for j in jobs if j["status"] in ("queued", "running")]
    for job in jobs:
        folder = store.job_dir(job["id"])
        files = sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
        if job["status"] == "failed":
            assert files == [], f"failed job {job['id']} left files: {files}"
        else:
            assert files, f"succeeded job {job['id']} has no output files"
    stray = [p for p in server.data_dir.rglob("*") if p.is_file() and "passwd" in p.name]
    assert stray == []
