"""The ``zerogpu`` executor through the real transport of ``spaces.GPU``, without ZeroGPU hardware.

On ZeroGPU, ``spaces.GPU`` puts the GPU function's ``(args, kwargs)`` on a queue to a process
made by ``multiprocessing.get_context("fork")`` and gets the result back the same way (both
pickled: ``spaces/zero/wrappers.py``). :func:`fork_call` does exactly that around the
executor's GPU function, so a job's arguments or result that do not pickle fail here, not on
a Space. What cannot exist here: the ZeroGPU scheduler and its GPU (the window's duration is
checked as the number the executor would ask for). Wav2Lip runs on random weights in the
published checkpoint format (tests/fixtures_wav2lip.py); real ffmpeg, real SQLite.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import media
from fixtures_wav2lip import wav2lip_checkpoint  # noqa: F401 - a fixture
from jobs.executors import EXECUTORS, make_executor
from jobs.lifecycle import run_recorded
from jobs.settings import settings_from_env
from jobs.work import GenerationJob
from jobs.zerogpu import (GpuWindowTooShort, Relay, WindowOutcome, WindowPlan, ZeroGpuExecutor,
                          run_in_window, window_duration)
from pipeline.media.probe import Limits
from pipeline.options import RunOptions
from storage.jobs import JobStore


def _child(args_queue: Any, result_queue: Any) -> None:
    (args, kwargs) = args_queue.get()
    outcome = run_in_window(*args, **kwargs)
    result_queue.put((os.getpid(), outcome))


CHILD_PIDS: list[int] = []
CHILD_TIMEOUT_S = 240.0


def fork_call(job: GenerationJob, relay: Relay, window_s: float) -> WindowOutcome:
    """The GPU function in a forked process, arguments and result through pickle, as spaces does."""
    ctx = multiprocessing.get_context("fork")
    args_queue, result_queue = ctx.SimpleQueue(), ctx.SimpleQueue()
    proc = ctx.Process(target=_child, args=(args_queue, result_queue), daemon=True)
    proc.start()
    args_queue.put(((job, relay, window_s), {}))
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not result_queue._reader.poll(0.5):  # spaces: a dead worker is an aborted task
        assert proc.is_alive(), f"the window process died (exit code {proc.exitcode})"
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the window process hung for {CHILD_TIMEOUT_S:g} s")
    pid, outcome = result_queue.get()
    proc.join(timeout=30)
    CHILD_PIDS.append(pid)
    return outcome


@pytest.fixture()
def store(tmp_path: Path) -> JobStore:
    with JobStore(tmp_path / "data" / "jobs.db", data_dir=tmp_path / "data") as s:
        yield s


def _options(model: str, checkpoint: Path) -> RunOptions:
    if model == "wav2lip":
        return RunOptions(model="wav2lip", checkpoint=str(checkpoint), device="cpu", batch_size=8)
    return RunOptions(model=model)


@pytest.mark.parametrize("model", ["baseline", "passthrough", "wav2lip"])
def test_a_job_runs_in_a_forked_window_and_is_scored_and_recorded_outside(
        model: str, store: JobStore, face_mp4: Path, speech_wav: Path, wav2lip_checkpoint: Path,  # noqa: F811
        tmp_path: Path) -> None:
    executor = ZeroGpuExecutor(work_dir=str(tmp_path), call=fork_call)
    stages: list[str] = []
    CHILD_PIDS.clear()
    done = run_recorded(face_mp4, speech_wav, options=_options(model, wav2lip_checkpoint), store=store,
                        source="app", executor=executor, progress=lambda s, f: stages.append(s))
    assert CHILD_PIDS and CHILD_PIDS[0] != os.getpid()  # generation ran in the forked process
    job = store.get(done.job_id)
    assert job["status"] == "succeeded", job.get("error")
    assert job["model_used"] == model
    assert Path(done.outputs["video"]).stat().st_size > 1000
    metrics = {row["metric"] for row in job["scores"]}
    assert {"psnr_full", "ssim_full"} <= metrics  # scored by the server process, after the window
    # the run loop's stages came out of the window (polled: a fast stage may be skipped)
    assert stages[0] == "gpu" and set(stages) - {"gpu", "score"} and stages[-1] == "score"
    assert executor.rate(model) > 0 and executor._rates[model]  # this job's rate was measured
    assert not list(tmp_path.glob("zerogpu-*"))  # the relay folder is removed


def test_a_domain_error_inside_the_window_is_recorded_with_its_class(
        store: JobStore, speech_wav: Path, tmp_path: Path) -> None:
    import numpy as np

    blank = media.write_video(tmp_path / "blank.mp4", np.zeros((25, 160, 160, 3), np.uint8))
    executor = ZeroGpuExecutor(work_dir=str(tmp_path), call=fork_call)
    with pytest.raises(Exception) as info:
        run_recorded(blank, speech_wav, options=RunOptions(model="baseline"), store=store, executor=executor)
    assert type(info.value).__name__ == "NoFaceFound"
    job = store.list()[0]
    assert (job["status"], job["error_type"]) == ("failed", "NoFaceFound")


def test_cancel_reaches_the_window(store: JobStore, face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    executor = ZeroGpuExecutor(work_dir=str(tmp_path), call=fork_call)
    with pytest.raises(Exception) as info:
        run_recorded(face_mp4, speech_wav, options=RunOptions(model="baseline"), store=store,
                     executor=executor, cancel=lambda: True)
    assert type(info.value).__name__ == "JobCancelled"
    assert store.list()[0]["status"] == "cancelled"


def test_a_job_too_long_for_the_window_is_refused_before_it_starts(
        store: JobStore, face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    calls: list[Any] = []
    plan = WindowPlan(max_s=20.0, startup_s=15.0, margin=1.5)
    executor = ZeroGpuExecutor(plan, work_dir=str(tmp_path), call=lambda *a: calls.append(a))
    with pytest.raises(GpuWindowTooShort, match=r"more than the 20 s one ZeroGPU window may last"):
        run_recorded(face_mp4, speech_wav, options=RunOptions(model="wav2lip"), store=store, executor=executor)
    assert calls == []  # no window was asked for
    job = store.list()[0]
    assert (job["status"], job["error_type"]) == ("failed", "GpuWindowTooShort")
    assert "speech of at most about" in job["error_message"]


def test_the_window_grows_with_the_media_and_the_model(face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    executor = ZeroGpuExecutor(work_dir=str(tmp_path))
    job = GenerationJob.of(face_mp4, speech_wav, tmp_path / "o.mp4", options=RunOptions(model="baseline"))
    baseline = executor.window(job)
    assert baseline.frames == 75  # 3.0 s of speech at the video's 25 fps
    # 384x384 is a quarter (the floor) of a 720p frame's cost
    assert baseline.seconds == pytest.approx((15 + 75 * 0.04 * 0.25) * 1.5)
    wav2lip = executor.window(dataclasses.replace(job, options=RunOptions(model="wav2lip")))
    assert wav2lip.seconds > baseline.seconds
    assert window_duration(job, Relay(str(tmp_path)), baseline.seconds) == 24  # ceil(23.625): what spaces.GPU is asked


def _every_option(checkpoint: Path) -> list[RunOptions]:
    """One RunOptions per field changed from its default (all of them), plus a full one."""
    changed = {"model": "wav2lip", "face_index": 1, "device": "cpu", "batch_size": 4,
               "checkpoint": str(checkpoint), "pads": (1, 2, 3, 4), "loop": "loop", "crf": 30,
               "preset": "fast", "encoder": "libx264", "tracker": "dlib", "track_long_side": 256,
               "timeout_s": 30.0, "work_dir": "/tmp", "limits": Limits(max_side=512, max_duration_s=9.0),
               "steps": 3, "guidance": 2.0, "seed": 7, "silence_keep": False}
    names = {f.name for f in dataclasses.fields(RunOptions)}
    assert names == set(changed), "a new RunOptions field: add it here"
    return [RunOptions(**{k: v}) for k, v in changed.items()] + [RunOptions(**changed)]


def test_the_exact_call_arguments_pickle_for_every_option(face_mp4: Path, speech_wav: Path, tmp_path: Path,
                                                          wav2lip_checkpoint: Path) -> None:  # noqa: F811
    executor = ZeroGpuExecutor(work_dir=str(tmp_path))
    relay = Relay(str(tmp_path))
    for options in _every_option(wav2lip_checkpoint):
        job = GenerationJob.of(face_mp4, speech_wav, tmp_path / "o.mp4", options=options, job_id="j1",
                               side_by_side=tmp_path / "s.mp4")
        args = executor.call_args(job, relay, executor.window(dataclasses.replace(
            job, options=dataclasses.replace(options, model="baseline"))))
        back = pickle.loads(pickle.dumps(args))
        assert back[0].options.model == options.model and back[0].score is False
        assert back[0].options.timeout_s <= args[2]  # the window is the run's time limit
        assert back == args


def test_spaces_is_a_no_op_without_zerogpu_hardware() -> None:
    spaces = pytest.importorskip("spaces", reason="install requirements-dev.txt (spaces)")
    code = ("import spaces, jobs.zerogpu as z\n"
            "f = lambda: 1\n"
            "assert spaces.GPU(duration=lambda: 5)(f) is f\n"
            "assert z.gpu_generate is z.run_in_window\n"
            "print('no-op')")
    env = {k: v for k, v in os.environ.items() if k != "SPACES_ZERO_GPU"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0 and "no-op" in out.stdout, out.stderr[-2000:]
    assert spaces.__name__ == "spaces"


def test_zerogpu_is_picked_on_zerogpu_hardware_and_by_name() -> None:
    assert EXECUTORS["zerogpu"] == ("jobs.zerogpu", "ZeroGpuExecutor")
    assert settings_from_env({"SPACES_ZERO_GPU": "true", "SPACE_ID": "a/b"}).executor == "zerogpu"
    assert settings_from_env({"SPACES_ZERO_GPU": "false", "SPACE_ID": "a/b"}).executor == "threads"
    assert settings_from_env({"LIPSYNC_EXECUTOR": "zerogpu"}).executor == "zerogpu"
    assert settings_from_env({"SPACES_ZERO_GPU": "1", "LIPSYNC_EXECUTOR": "threads"}).executor == "threads"
    assert isinstance(make_executor("zerogpu", max_jobs=1), ZeroGpuExecutor)
