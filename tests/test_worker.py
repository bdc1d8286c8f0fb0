"""Generation in worker processes (jobs.workers): real child processes, real signals,
real ffmpeg and dlib, the baseline generator, tiny synthetic media."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import media
from jobs import workers as worker_mod
from pipeline.errors import InvalidMedia, JobCancelled, JobTimeout, WorkerDied
from pipeline.options import RunOptions
from jobs.work import GenerationJob
from jobs.workers import WorkerPool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("worker_media")
    return {"video": media.face_video(d / "face.mp4", seconds=0.4),
            "short": media.write_wav(d / "short.wav", media.speech_like(0.4)),
            "long": media.write_wav(d / "long.wav", media.speech_like(60.0))}


def _pids() -> list[int]:
    """Process ids of this process's live generation workers (``python -m jobs.workers``)."""
    return [p.pid for p in psutil.Process().children()
            if p.status() != psutil.STATUS_ZOMBIE and "jobs.workers" in " ".join(p.cmdline())]


@pytest.fixture(scope="module")
def pool() -> WorkerPool:
    p = WorkerPool(1)
    p.start()
    yield p
    p.close()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _opts(work: Path, **kw: object) -> RunOptions:
    return RunOptions(model="baseline", work_dir=str(work), **kw)


def _when_generating(flag: threading.Event, then: Callable[[], object]) -> Callable[[str, float], None]:
    """A progress callback that calls ``then`` once the job reaches the generate stage."""
    def progress(stage: str, fraction: float) -> None:
        if stage == "generate" and not flag.is_set():
            flag.set()
            then()
    return progress


def test_a_job_runs_in_a_reused_worker(pool: WorkerPool, inputs: dict[str, Path], tmp_path: Path) -> None:
    stages: list[str] = []
    result, scores = pool.run(GenerationJob.of(inputs["video"], inputs["short"], tmp_path / "a.mp4", options=_opts(tmp_path / "w")), progress=lambda s, f: stages.append(s))
    assert (tmp_path / "a.mp4").stat().st_size > 0 and result.frames == 10
    assert result.track is not None and not result.originals  # scored in the worker, frames released
    assert result.speech is None  # and the speech, not sent back
    assert scores.value("psnr_full") > 20 and scores.value("lse_d") is None
    assert {"audio", "track", "generate", "score"} <= set(stages)
    pid = _pids()
    assert len(pid) == 1 and pid[0] != os.getpid()
    pool.run(GenerationJob.of(inputs["video"], inputs["short"], tmp_path / "b.mp4", options=_opts(tmp_path / "w")))
    assert _pids() == pid  # the same process: models stay loaded between jobs
    assert list((tmp_path / "w").iterdir()) == []  # each job's scratch folder is removed


def test_domain_errors_cross_with_their_type(pool: WorkerPool, inputs: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(InvalidMedia, match="junk.mp4"):
        pool.run(GenerationJob.of(junk, inputs["short"], tmp_path / "o.mp4", options=_opts(tmp_path / "w")))
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_a_worker_that_dies_mid_job_fails_that_job_only(pool: WorkerPool, inputs: dict[str, Path],
                                                        tmp_path: Path, sig: signal.Signals) -> None:
    """A crash in native code (SIGSEGV) or a kill: WorkerDied names the signal and the stage;
    its ffmpeg children are killed with it (they are stopped first, so they cannot end on
    their own when their pipes break: only the pool's kill of the group ends them); the
    scratch folder goes; the next job gets a fresh worker and succeeds."""
    pool.start()  # a worker, whatever an earlier test left
    before = _pids()
    flag = threading.Event()

    def freeze_children_and_kill() -> None:
        for pid in _group(before[0], pids=True):
            if pid != before[0]:
                os.kill(pid, signal.SIGSTOP)
        os.kill(before[0], sig)

    try:
        with pytest.raises(WorkerDied, match=f"killed by {sig.name}.*during stage 'generate'"):
            pool.run(GenerationJob.of(inputs["video"], inputs["long"], tmp_path / "o.mp4", options=_opts(tmp_path / "w")),
                          progress=_when_generating(flag, freeze_children_and_kill))
        assert not _running(before[0])
        deadline = time.monotonic() + 5.0  # a killed process takes a moment to exit
        while _group(before[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _group(before[0]) == []  # its ffmpeg decoder and encoder went with it
    finally:
        for pid in _group(before[0], pids=True):  # a failure leaves none stopped behind
            os.kill(pid, signal.SIGKILL)
    assert list((tmp_path / "w").iterdir()) == []
    result, _ = pool.run(GenerationJob.of(inputs["video"], inputs["short"], tmp_path / "n.mp4", options=_opts(tmp_path / "w")))
    assert result.frames == 10 and _pids() != before


def _group(pgid: int, *, pids: bool = False) -> list:
    """Live processes in process group ``pgid`` (a worker's own group, see jobs.workers):
    "PID NAME" strings, or the pids."""
    found = []
    for p in psutil.process_iter(["name", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.pid if pids else f"{p.pid} {p.info['name']}")
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def test_a_worker_left_mid_job_is_not_reused(pool: WorkerPool, inputs: dict[str, Path], tmp_path: Path) -> None:
    """When the parent stops listening mid-job (here its progress callback raises), the
    worker may still be busy with that job: it is killed, never handed the next job."""
    pool.start()  # a worker, whatever an earlier test left
    busy = _pids()

    def boom(stage: str, fraction: float) -> None:
        if stage == "generate":
            raise RuntimeError("the caller went away")

    with pytest.raises(RuntimeError, match="went away"):
        pool.run(GenerationJob.of(inputs["video"], inputs["long"], tmp_path / "o.mp4", options=_opts(tmp_path / "w")),
                      progress=boom)
    assert not _running(busy[0]) and busy[0] not in _pids()
    result, _ = pool.run(GenerationJob.of(inputs["video"], inputs["short"], tmp_path / "n.mp4", options=_opts(tmp_path / "w")))
    assert result.frames == 10


def test_cancel_reaches_the_worker(pool: WorkerPool, inputs: dict[str, Path], tmp_path: Path) -> None:
    flag, cancel = threading.Event(), threading.Event()
    with pytest.raises(JobCancelled):
        pool.run(GenerationJob.of(inputs["video"], inputs["long"], tmp_path / "o.mp4", options=_opts(tmp_path / "w")),
                      cancel=cancel.is_set, progress=_when_generating(flag, cancel.set))
    assert not (tmp_path / "o.mp4").exists()


def test_a_hung_worker_is_killed_past_the_time_limit(pool: WorkerPool, inputs: dict[str, Path],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP freezes the worker as a hang inside native code would: the run loop's own time
    checks never come, so the parent kills it KILL_GRACE_S after the limit."""
    monkeypatch.setattr(worker_mod, "KILL_GRACE_S", 1.0)
    flag = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(JobTimeout, match="worker process was killed"):
        pool.run(GenerationJob.of(inputs["video"], inputs["long"], tmp_path / "o.mp4", options=_opts(tmp_path / "w", timeout_s=2.0)),
                      progress=_when_generating(flag, lambda: os.kill(_pids()[0], signal.SIGSTOP)))
    assert time.monotonic() - t0 < 20
    result, _ = pool.run(GenerationJob.of(inputs["video"], inputs["short"], tmp_path / "n.mp4", options=_opts(tmp_path / "w")))
    assert result.frames == 10


def test_workers_exit_when_their_server_is_killed(tmp_path: Path) -> None:
    code = ("import time, psutil; from jobs.workers import WorkerPool; p = WorkerPool(2); p.start(); "
            "time.sleep(0.5); print(' '.join(str(c.pid) for c in psutil.Process().children()), flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(_running(p) for p in pids)
    proc.kill()  # SIGKILL: no clean-up code runs in the server
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.1)
    assert not any(_running(p) for p in pids)


def test_the_gpu_lane_spans_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With LANE_FILE_ENV set (as the pool sets it for its workers), a process holding the
    lane keeps another process out until it lets go, or dies."""
    from pipeline import device

    monkeypatch.setenv(device.LANE_FILE_ENV, str(tmp_path / "lane.lock"))
    probe = [sys.executable, "-c", "from pipeline.device import gpu_lock; print(gpu_lock().acquire(blocking=False))"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lane = device._Lane()  # this process's lane, as a worker's would be
    with lane:
        with lane:  # re-entrant
            pass
        assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == "False"
    assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == "True"


def test_scoring_runs_in_a_worker_and_a_killed_scorer_fails_that_request_only(
        pool: WorkerPool, inputs: dict[str, Path], tmp_path: Path) -> None:
    """/score's work (ScoreJob) runs in a worker process, not in the caller; a scorer killed
    while it decodes (its ffmpeg child running) fails that request with WorkerDied naming
    scoring, and the next request is scored by a fresh worker."""
    import concurrent.futures

    from jobs.work import ScoreJob

    video = media.face_video(tmp_path / "long_face.mp4", seconds=12.0)
    pool.start()
    ok = pool.score(ScoreJob(str(inputs["video"]), str(inputs["video"]), str(inputs["short"])))
    assert ok["facts"]["compared_frames"] == 10
    worker = _pids()[0]
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        request = ex.submit(pool.score, ScoreJob(str(video), str(video), None))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not [p for p in _group(worker, pids=True) if p != worker]:
            time.sleep(0.01)  # until the scorer's ffmpeg decoder runs
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(WorkerDied, match="scoring worker process died \\(killed by SIGKILL\\)"):
            request.result(timeout=60)
    again = pool.score(ScoreJob(str(inputs["video"]), str(inputs["video"]), str(inputs["short"])))
    assert again["facts"]["compared_frames"] == 10
    assert worker not in _pids()
