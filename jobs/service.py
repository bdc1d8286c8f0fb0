"""What the app's handlers do, without Gradio: start the service, run a recorded job, score,
query the history.

Handlers in the ui/ tab modules call these and wrap them in :func:`ui.errors.user_errors`.
A generation job runs in a worker thread (:func:`run_cancellable`) so that cancelling the
Gradio event sets the job's cancel flag: the pipeline stops at its next check, the job is
recorded as cancelled, and only then is the event's concurrency slot released.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from jobs.access import EVERYONE, Viewer
from jobs.examples import ensure_examples
from jobs.executors import Executor, InProcessExecutor, make_executor
from jobs.lifecycle import run_recorded
from jobs.settings import Settings
from jobs.work import ScoreJob
from jobs.workspace import clean_stale_work_dirs, process_work_dir, renew_lease
from pipeline.errors import InputMissing, InvalidOption
from pipeline.media.probe import Limits
from pipeline.options import RunOptions
from storage.jobs import JobStore

log = logging.getLogger(__name__)

T = TypeVar("T")
ProgressFn = Callable[[str, float], None]

# Options a request may set; the rest (checkpoint path, work folder, limits) are the server's.
USER_OPTIONS = ("face_index", "batch_size", "pads", "loop", "crf", "preset", "device", "tracker",
                "timeout_s", "steps", "guidance", "seed", "silence_keep")


@dataclass(frozen=True)
class Service:
    """What a server holds for its life: settings (with its own work folder), the history,
    the executor that runs generation, and the example inputs."""

    settings: Settings
    store: JobStore
    executor: Executor
    examples: dict[str, str]


def open_service(settings: Settings) -> Service:
    """Open the job history (marking jobs of dead processes interrupted), delete the job temp
    folders of dead processes, give this process its own (``settings.work_dir``), start the
    heartbeat (the leases of its jobs and work folder; retention every
    ``settings.retention_interval_s``), make the examples and start the executor (worker
    processes load their models in the background)."""
    announce_storage(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_work_dirs(settings.data_dir)
    settings = dataclasses.replace(settings, work_dir=process_work_dir(settings.data_dir))
    store = JobStore(settings.db_path, data_dir=settings.data_dir)
    work_dir = settings.work_dir
    store.keep_alive(also=(lambda: renew_lease(work_dir),), retention_s=settings.retention_interval_s)
    if store.recovered:
        log.warning("%d job(s) of an earlier process were marked interrupted", len(store.recovered))
    try:
        examples = ensure_examples(settings.data_dir)
    except Exception:  # noqa: BLE001 - the app works without examples; say why in the log
        log.exception("could not make the example inputs")
        examples = {}
    executor = make_executor(settings.executor, max_jobs=settings.max_jobs,
                             work_dir=os.fspath(settings.work_dir))
    executor.start()
    log.info("generation runs in executor %r", executor.name)
    return Service(settings=settings, store=store, executor=executor, examples=examples)


def announce_storage(settings: Settings) -> None:
    """Point ``HF_HOME`` at persistent storage when the settings chose it (before any
    weights are looked up, and before worker processes inherit the environment), and say
    in the log where the history lives and whether it survives a restart."""
    if settings.hf_home is not None and not os.environ.get("HF_HOME"):
        os.environ["HF_HOME"] = os.fspath(settings.hf_home)
        log.info("weights cache: HF_HOME=%s (persistent storage)", settings.hf_home)
    if settings.history_lost_at_restart:
        log.warning("job history in %s is on this Space's ephemeral disk: it is LOST at every restart "
                    "(attach persistent storage at /data to keep it)", settings.data_dir)
    else:
        log.info("job history in %s%s", settings.data_dir, " (persistent storage)" if settings.persistent else "")


@dataclass(frozen=True)
class JobOutcome:
    """A finished generation job, as the UI and the API show it."""

    job_id: str
    video: str
    side_by_side: str | None
    scores: dict[str, Any] | None  # eval Scores.to_dict()
    score_rows: list[dict[str, Any]]  # Scores.rows(): metric, value, reason, convention
    timings: dict[str, float]
    offsets: dict[str, float]
    model_used: str
    model_reason: str
    frames: int
    frames_without_face: int
    total_s: float


def parse_options(model: str, options: Mapping[str, Any] | str | None, *,
                  settings: Settings) -> RunOptions:
    """RunOptions for a request: ``model`` plus the USER_OPTIONS in ``options`` (a dict or
    JSON text), with the server's limits, encoder and work folder. Raises InvalidOption
    naming a bad key, or a value and its range (RunOptions checks every one), before
    anything is recorded."""
    if isinstance(options, str):
        text = options.strip()
        try:
            options = json.loads(text) if text else {}
        except json.JSONDecodeError as exc:
            raise InvalidOption(f"options are not valid JSON: {exc}") from None
    if options is not None and not isinstance(options, Mapping):
        raise InvalidOption(f"options must be a JSON object, got {type(options).__name__}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(USER_OPTIONS))
    if unknown:
        raise InvalidOption(f"unknown option(s) {', '.join(unknown)}: allowed are {', '.join(USER_OPTIONS)}")
    if isinstance(options.get("pads"), list):
        options["pads"] = tuple(options["pads"])
    timeout = options.get("timeout_s") or settings.job_timeout_s
    if settings.job_timeout_s and isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        timeout = min(float(timeout), settings.job_timeout_s)
    options["timeout_s"] = timeout
    options = {k: v for k, v in options.items() if v is not None}
    limits = Limits(max_side=settings.max_side, max_duration_s=settings.max_duration_s)
    return RunOptions(model=model or "auto", limits=limits, encoder=settings.encoder,
                      work_dir=os.fspath(settings.work_dir) if settings.work_dir else None, **options)


def run_job(video: str | None, audio: str | None, options: RunOptions, *, store: JobStore,
            source: str, user: str | None = None, progress: ProgressFn | None = None,
            cancel: Callable[[], bool] | None = None, executor: Executor | None = None) -> JobOutcome:
    """Run and record one job (see ``jobs.lifecycle.run_recorded``) on ``executor``;
    domain errors propagate after the job is recorded as failed or cancelled."""
    if not video:
        raise InputMissing("give a face video (or a still photo)")
    if not audio:
        raise InputMissing("give a speech audio file")
    rec = run_recorded(video, audio, options=options, progress=progress, cancel=cancel,
                       source=source, user=user, store=store, score=True, side_by_side=True,
                       executor=executor)
    res = rec.result
    scores = rec.scores
    sbs = rec.outputs.get("side_by_side")
    return JobOutcome(
        job_id=rec.job_id or "", video=rec.outputs.get("video", res.output_path),
        side_by_side=sbs if sbs and os.path.exists(sbs) else None,
        scores=scores.to_dict() if scores is not None else None,
        score_rows=scores.rows() if scores is not None else [],
        timings=dict(res.timings), offsets=dict(res.stage_offsets), model_used=res.model_used,
        model_reason=res.model_reason, frames=res.frames,
        frames_without_face=res.frames_without_face, total_s=res.total_s)


async def run_cancellable(fn: Callable[[Callable[[], bool]], T]) -> T:
    """Run ``fn(cancelled)`` in a worker thread (with this context, so gr.Progress works).

    When the awaiting task is cancelled (the user's Cancel button, ``Job.cancel()`` of
    gradio_client), the flag ``cancelled()`` turns true and this waits for ``fn`` to stop
    before re-raising, so a cancelled job never runs on beside the next one.
    """
    flag = threading.Event()
    ctx = contextvars.copy_context()
    future = asyncio.get_running_loop().run_in_executor(None, ctx.run, fn, flag.is_set)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        flag.set()
        log.info("cancel requested: waiting for the running job to stop")
        with contextlib.suppress(Exception):
            await future
        raise


def score_files(original: str | None, generated: str | None, audio: str | None = None, *,
                executor: Executor | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Scores of ``generated`` against ``original`` (eval.score.score_videos) as JSON, run by
    ``executor`` (a worker process with the ``workers`` executor: the uploads are decoded
    there, never in the server), else in this process."""
    if not original or not generated:
        raise InputMissing("give the original video and the generated video")
    job = ScoreJob(original, generated, audio or None, timeout_s=timeout_s)
    return (executor or InProcessExecutor()).score(job)


def history_filters(status: str | None = None, model: str | None = None, since: str | None = None,
                    until: str | None = None, text: str | None = None) -> dict[str, Any]:
    """JobStore.list filters from UI/API values ("all" and blanks mean no filter)."""
    def clean(v: str | None) -> str | None:
        v = (v or "").strip()
        return None if not v or v.lower() == "all" else v

    return {"status": clean(status), "model": clean(model), "since": clean(since),
            "until": clean(until), "text": clean(text)}


def list_jobs(store: JobStore, *, limit: int | None = 200, viewer: Viewer = EVERYONE,
              **filters: Any) -> list[dict[str, Any]]:
    """Jobs newest first as JSON-able dicts (JobStore.list with ``history_filters``), only
    those ``viewer`` may see."""
    limit = None if limit is None or int(limit) <= 0 else int(limit)
    return store.list(limit=limit, user=viewer.user_filter, **history_filters(**filters))


def get_job(store: JobStore, job_id: str | None, *, viewer: Viewer = EVERYONE) -> dict[str, Any]:
    """One job's record with inputs, stages, scores and device (JobStore.get); JobAccessDenied
    when it is not ``viewer``'s to see."""
    job_id = (job_id or "").strip()
    if not job_id:
        raise InputMissing("give a job id")
    return viewer.check(store.get(job_id))


def job_outputs(job: Mapping[str, Any]) -> dict[str, str]:
    """The job's output files that still exist (retention may have deleted them)."""
    outs = job.get("outputs") or {}
    if job.get("files_gone"):
        return {}
    return {k: v for k, v in outs.items() if isinstance(v, str) and os.path.isfile(v)}
