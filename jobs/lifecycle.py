"""A job's life in the history: create -> start -> generate (an executor) -> finish or fail.

The run loop (``pipeline.run``) knows nothing of the database; this module wraps an
executor's run so that every job from the CLI, the app or the API lands in the same SQLite
history (``storage.jobs.JobStore``), with its options, inputs, stage timings, scores, device
facts and outcome. A failure is recorded with its exception's class name and message and
then re-raised unchanged, so callers still turn it into their own user-facing error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.executors import CancelFn, Executor, InProcessExecutor, ProgressFn
from jobs.work import GenerationJob
from pipeline.device import device_facts as host_facts
from pipeline.errors import JobCancelled
from pipeline.options import RunOptions, RunResult

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
    scores: Any = None  # eval.results.Scores or None when scoring was off
    outputs: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out["job_id"] = self.job_id
        out["outputs"] = dict(self.outputs)
        out["scores"] = self.scores.to_dict() if self.scores is not None else None
        return out


def device_facts(result: RunResult | None, device: str, executor: str | None = None) -> dict[str, Any]:
    """CPU/GPU model and peak memory for the job's device row, with the executor's name: this
    host's, or the facts of the node that ran the job (``result.host``, a cluster executor's)."""
    facts = host_facts(device=device)
    if result is not None and result.host:
        facts = {**facts, **result.host}
    if result is not None:  # the run's own peak (a worker's, when a worker ran it)
        facts["peak_rss_mb"] = result.peak_rss_mb
    if executor is not None:
        facts["executor"] = executor
    return facts


def _inputs(video: str | os.PathLike[str], audio: str | os.PathLike[str]) -> dict[str, Any]:
    return {"video": os.fspath(video), "audio": os.fspath(audio)}


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
    executor: Executor | None = None,
) -> RecordedRun:
    """Run one job and record it. ``output=None`` writes into the job's own folder.
    ``executor`` runs the generation (default: in this process); the job is recorded here,
    so an executor that loses the job (a worker that dies) still leaves a failed job with
    the reason."""
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
        job = GenerationJob.of(video, audio, out_path, options=options, side_by_side=sbs_path,
                               score=score, job_id=job_id)
        executor = executor or InProcessExecutor()
        result, scores = executor.run(job, progress=progress, cancel=cancel)
        _offsets_from(result, started)
    except JobCancelled as exc:
        if store is not None:
            store.cancel(job_id, str(exc))
        raise
    except BaseException as exc:
        with contextlib.suppress(AttributeError):
            exc.job_id = job_id  # the UI names the job in its message for an unexpected error
        if store is not None:
            timings = getattr(exc, "timings", None) or {}
            store.fail(job_id, error_type=type(exc).__name__, message=str(exc) or repr(exc),
                       stage_seconds=timings.get("seconds"), stage_offsets=timings.get("offsets"),
                       device=device_facts(None, options.device, _executor_name(executor)))
        raise
    outputs = {"video": os.fspath(out_path)}
    if sbs_path is not None:
        outputs["side_by_side"] = os.fspath(sbs_path)
    if store is not None:
        store.finish(job_id, model_used=result.model_used, model_reason=result.model_reason,
                     outputs=outputs, facts=_facts(result),
                     device=device_facts(result, options.device, _executor_name(executor)),
                     output_duration_s=result.duration_s, stage_seconds=result.timings,
                     stage_offsets=result.stage_offsets,
                     scores=scores.rows() if scores is not None else None)
    return RecordedRun(job_id=job_id, result=result, scores=scores, outputs=outputs)


def _executor_name(executor: Executor | None) -> str:
    return getattr(executor, "name", None) or InProcessExecutor.name


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
                              "generator_facts", "video", "audio", "encoder")}
