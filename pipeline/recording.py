"""One job with its history record: create -> start -> run -> score -> finish (or fail).

The run loop (``pipeline.run``) knows nothing of the database; this module wraps it so that
every job from the CLI, the app or the API lands in the same SQLite history
(``storage.jobs.JobStore``), with its options, inputs, stage timings, scores, device facts and
outcome. A failure is recorded with its exception's class name and message and then
re-raised unchanged, so callers still turn it into their own user-facing error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.errors import JobCancelled
from pipeline.options import RunOptions, RunResult
from pipeline.run import CancelFn, ProgressFn, peak_rss_mb, run

log = logging.getLogger(__name__)

RESULT_NAME = "result.mp4"  # the lip-synced video inside a job's folder
SIDE_BY_SIDE_NAME = "side_by_side.mp4"  # original | result, frame-aligned, with the new audio

_store_lock = threading.Lock()
_default_store: Any = None


def default_store() -> Any:
    """The process-wide JobStore on ``$LIPSYNC_DATA_DIR/jobs.db`` (opened once)."""
    global _default_store
    with _store_lock:
        if _default_store is None:
            from storage.jobs import JobStore

            _default_store = JobStore()
        return _default_store


@dataclass(frozen=True)
class RecordedRun:
    """A finished job: its id (None when not recorded), the run result, scores and files."""

    job_id: str | None
    result: RunResult
    scores: Any = None  # eval.scores.Scores or None when scoring was off
    outputs: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out["job_id"] = self.job_id
        out["outputs"] = dict(self.outputs)
        out["scores"] = self.scores.to_dict() if self.scores is not None else None
        return out


def device_facts(result: RunResult | None, device: str) -> dict[str, Any]:
    """CPU/GPU model and peak memory for the job's device row."""
    from storage.records import device_facts as base_facts

    facts = base_facts(device=device)
    facts["peak_rss_mb"] = result.peak_rss_mb if result is not None else peak_rss_mb()
    try:
        import torch

        if torch.cuda.is_available():
            facts["gpu_model"] = torch.cuda.get_device_name(0)
            facts["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # noqa: BLE001 - device facts are best effort, never fail a job
        log.debug("no GPU facts", exc_info=True)
    return facts


def score_result(video: str | os.PathLike[str], audio: str | os.PathLike[str],
                 result: RunResult) -> Any:
    """Scores of ``result`` against the original; a scoring failure never fails the job."""
    from eval.score import score_videos

    return score_videos(video, result.output_path, audio=audio, track=result.track,
                        originals=result.originals, speech=result.speech)


def scored_frames(n_frames: int) -> set[int]:
    """The output indices whose original frames scoring compares (``run(keep=...)``)."""
    from eval.score import sample_frames

    return sample_frames(n_frames)


def _inputs(video: str | os.PathLike[str], audio: str | os.PathLike[str]) -> dict[str, Any]:
    return {"video": os.fspath(video), "audio": os.fspath(audio)}


def warm_up() -> None:
    """Load what a process's first job would: the scorer's modules, the default face tracker
    and the audio front end. Only a speed-up: on failure the first job pays instead."""
    try:
        import numpy as np

        from eval import score  # noqa: F401 - skimage, scipy and the scorer
        from pipeline import audio
        from pipeline.faces import make_tracker

        make_tracker("auto")
        audio.melspectrogram(np.zeros(audio.SAMPLE_RATE, np.float32))  # 1 s of silence
    except Exception:  # noqa: BLE001
        log.warning("warm-up failed", exc_info=True)


def generate(video: str | os.PathLike[str], audio: str | os.PathLike[str],
             output: str | os.PathLike[str], *, options: RunOptions,
             progress: ProgressFn | None = None, cancel: CancelFn | None = None,
             side_by_side: str | os.PathLike[str] | None = None,
             score: bool = True) -> tuple[RunResult, Any]:
    """The work of one job, without its record: ``run`` and, if ``score``, its Scores."""
    result = run(video, audio, output, options=options, progress=progress, cancel=cancel,
                 side_by_side=side_by_side, keep=scored_frames if score else None)
    scores = None
    if score:
        if progress is not None:
            progress("score", 0.99)
        scores = _safe_scores(video, audio, result)
        # what scoring needed (original frames ~1.4 MB each at 720p, the speech) is done with,
        # and a worker need not send it back
        result = replace(result, originals={}, speech=None)
    return result, scores


def run_recorded(
    video: str | os.PathLike[str],
    audio: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    options: RunOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    source: str = "cli",
    user: str | None = None,
    record: bool = True,
    store: Any = None,
    score: bool = True,
    side_by_side: bool = False,
    on_job_id: Callable[[str], None] | None = None,
    workers: Any = None,
) -> RecordedRun:
    """Run one job and record it. ``output=None`` writes into the job's own folder.
    ``workers`` (a ``pipeline.worker.WorkerPool``) runs the generation in a worker process:
    the job is recorded here, so a worker that dies still leaves a failed job with the reason."""
    options = options or RunOptions()
    if record and store is None:
        store = default_store()
    if not record:
        store = None
    if output is None and store is None:
        raise ValueError("an output path is needed when the job is not recorded")

    job_id = None
    if store is not None:
        job_id = store.create(source=source, inputs=_inputs(video, audio),
                              options=options.to_dict(), model_requested=options.model, user=user)
        if on_job_id is not None:
            on_job_id(job_id)
        store.start(job_id)
    started = time.time()
    folder = Path(store.job_dir(job_id, create=True)) if store is not None else None
    out_path = Path(output) if output is not None else folder / RESULT_NAME
    sbs_path = None
    if side_by_side:
        sbs_path = (folder or out_path.parent) / (SIDE_BY_SIDE_NAME if folder else
                                                  f"{out_path.stem}.side_by_side.mp4")
    try:
        result, scores = (workers.generate if workers is not None else generate)(
            video, audio, out_path, options=options, progress=progress, cancel=cancel,
            side_by_side=sbs_path, score=score)
        _offsets_from(result, started)
    except JobCancelled as exc:
        if store is not None:
            store.cancel(job_id, str(exc))
        raise
    except BaseException as exc:
        if store is not None:
            timings = getattr(exc, "timings", None) or {}
            store.fail(job_id, error_type=type(exc).__name__, message=str(exc) or repr(exc),
                       stage_seconds=timings.get("seconds"), stage_offsets=timings.get("offsets"),
                       device=device_facts(None, options.device))
        raise
    outputs = {"video": os.fspath(out_path)}
    if sbs_path is not None:
        outputs["side_by_side"] = os.fspath(sbs_path)
    if store is not None:
        store.finish(job_id, model_used=result.model_used, model_reason=result.model_reason,
                     outputs=outputs, facts=_facts(result), device=device_facts(result, options.device),
                     output_duration_s=result.duration_s, stage_seconds=result.timings,
                     stage_offsets=result.stage_offsets,
                     scores=scores.rows() if scores is not None else None)
    return RecordedRun(job_id=job_id, result=result, scores=scores, outputs=outputs)


def _offsets_from(result: RunResult, started: float) -> None:
    """Stage offsets counted from the job's recorded start, not from the run's own (a worker
    process may start the run a little later: dispatch, or loading its models first)."""
    lag = result.started_wall - started if result.started_wall else 0.0
    if lag > 0:
        result.stage_offsets.update({k: v + lag for k, v in result.stage_offsets.items()})


def _facts(result: RunResult) -> dict[str, Any]:
    d = result.to_dict()
    return {k: d[k] for k in ("frames", "fps", "duration_s", "width", "height",
                              "frames_without_face", "total_s", "peak_rss_mb", "checkpoint",
                              "video", "audio")}


def _safe_scores(video: str | os.PathLike[str], audio: str | os.PathLike[str],
                 result: RunResult) -> Any:
    """Scores, or a Scores of nulls naming why scoring failed (logged with its traceback)."""
    try:
        return score_result(video, audio, result)
    except Exception as exc:  # noqa: BLE001 - a scoring bug must not lose a finished video
        log.exception("scoring failed")
        from eval.scores import unavailable

        return unavailable(f"n/a (scoring failed: {type(exc).__name__}: {exc})")
