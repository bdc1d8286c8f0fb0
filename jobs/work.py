"""The work of one generation job, without its record: the run loop and, if asked, scoring.

This is what every executor runs (in this process, in a worker process, on a GPU elsewhere):
:func:`generate` takes a :class:`GenerationJob` of plain paths and options, so it crosses a
pickle unchanged, and returns the run's result with its scores.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, replace
from typing import Any

from pipeline.generators.base import ForwardFn
from pipeline.options import RunOptions, RunResult
from pipeline.run import CancelFn, ProgressFn, run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationJob:
    """One generation job as an executor receives it: paths and options only (picklable)."""

    video: str
    audio: str
    output: str
    options: RunOptions
    side_by_side: str | None = None  # where to write the original | result review video
    score: bool = True  # score the result against the original (in the executor's process)
    job_id: str | None = None  # the history's id, for logs and an executor's own bookkeeping

    @classmethod
    def of(cls, video: str | os.PathLike[str], audio: str | os.PathLike[str],
           output: str | os.PathLike[str], *, options: RunOptions,
           side_by_side: str | os.PathLike[str] | None = None, score: bool = True,
           job_id: str | None = None) -> GenerationJob:
        return cls(os.fspath(video), os.fspath(audio), os.fspath(output), options,
                   None if side_by_side is None else os.fspath(side_by_side), score, job_id)


@dataclass(frozen=True)
class ScoreJob:
    """One scoring request (the app's /score) as an executor receives it: paths only."""

    original: str
    generated: str
    audio: str | None = None
    timeout_s: float | None = None  # a worker pool kills a scorer still running this long past it


def score_job(job: ScoreJob, *, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None) -> tuple[dict[str, Any], None]:
    """(``score_videos(...).to_dict()``, None): the work of a :class:`ScoreJob`, in the shape an
    executor returns (``progress`` and ``cancel`` are accepted for that shape, not used)."""
    from eval.score import score_videos

    return score_videos(job.original, job.generated, audio=job.audio).to_dict(), None


def score_result(video: str | os.PathLike[str], audio: str | os.PathLike[str],
                 result: RunResult) -> Any:
    """Scores of ``result`` against the original, reusing what the run decoded for it."""
    from eval.score import score_videos
    from eval.sync_proxy import with_caution

    scores = score_videos(video, result.output_path, audio=audio, track=result.track,
                          originals=result.originals, speech=result.speech, source_indices=result.plan)
    return with_caution(scores, result.model_used)  # the baseline's proxy reads its own drive


def scored_frames(n_frames: int) -> set[int]:
    """The output indices whose original frames scoring compares (``run(keep=...)``)."""
    from eval.score import sample_frames

    return sample_frames(n_frames)


def warm_up() -> None:
    """Load what a process's first job would: the scorer's modules, the default face tracker
    and the audio front end. Only a speed-up: on failure the first job pays instead."""
    try:
        import numpy as np

        from eval import score  # noqa: F401 - skimage, scipy and the scorer
        from pipeline.faces.backends import make_tracker
        from pipeline.media import audio

        make_tracker("auto").load()
        audio.melspectrogram(np.zeros(audio.SAMPLE_RATE, np.float32))  # 1 s of silence
    except Exception:  # noqa: BLE001
        # A process that ends during its warm-up refuses new imports' atexit hooks: not a fault.
        exiting = not threading.main_thread().is_alive()
        log.log(logging.DEBUG if exiting else logging.WARNING, "warm-up failed", exc_info=True)


def generate(job: GenerationJob, *, progress: ProgressFn | None = None,
             cancel: CancelFn | None = None, forward: ForwardFn | None = None) -> tuple[RunResult, Any]:
    """``run`` the job and, if ``job.score``, its Scores: (RunResult, Scores or None).
    ``forward`` runs the generator's model steps elsewhere (``pipeline.run.run``)."""
    result = run(job.video, job.audio, job.output, options=job.options, progress=progress,
                 cancel=cancel, side_by_side=job.side_by_side,
                 keep=scored_frames if job.score else None, forward=forward)
    return score_here(job, result, progress)


def score_here(job: GenerationJob, result: RunResult,
               progress: ProgressFn | None = None) -> tuple[RunResult, Any]:
    """Score a finished run in this process when ``job.score`` (every executor scores where
    the history is, or beside the run), then drop what only scoring needed: the kept original
    frames (~1.4 MB each at 720p), the speech and the frame plan, so nothing sends them on.
    Without scoring the result is returned as it is (a remote run's plan is still to score)."""
    if not job.score:
        return result, None
    if progress is not None:
        progress("score", 0.99)
    scores = safe_scores(job.video, job.audio, result)
    return replace(result, originals={}, speech=None, plan=None), scores


def safe_scores(video: str | os.PathLike[str], audio: str | os.PathLike[str],
                result: RunResult) -> Any:
    """Scores, or a Scores of nulls naming why scoring failed (logged with its traceback)."""
    try:
        return score_result(video, audio, result)
    except Exception as exc:  # noqa: BLE001 - a scoring bug must not lose a finished video
        log.exception("scoring failed")
        from eval.results import unavailable

        return unavailable(f"n/a (scoring failed: {type(exc).__name__}: {exc})")


def sendable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (with its ``timings``), else a RuntimeError saying
    what it was: how a child process hands a job's failure to the server."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        out = RuntimeError(f"{type(exc).__name__}: {exc}")
        out.timings = getattr(exc, "timings", None)  # type: ignore[attr-defined]
        return out
