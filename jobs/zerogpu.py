"""The ``zerogpu`` executor: generation inside a Hugging Face ZeroGPU window (``spaces.GPU``).

On ZeroGPU hardware ``spaces.GPU`` runs the decorated function in a *forked* process that
holds a GPU for a bounded window, and passes the function's arguments and result through a
pickle (``spaces/zero/wrappers.py``: ``worker.arg_queue.put(((args, kwargs), ...))`` on a
``multiprocessing.get_context("fork")`` process). So the function under the decorator,
:func:`run_in_window`, takes only picklable values (the :class:`~jobs.work.GenerationJob`
of paths and options, a :class:`Relay` folder, the window in seconds) and returns a
picklable :class:`WindowOutcome`. Only the run loop goes inside the window (``score=False``):
the server process scores the result and records the job outside it, so the window is not
spent on CPU-only scoring nor SQLite writes.

The window is asked per job (``spaces.GPU(duration=window_duration)``, a function of the
call's arguments): start-up seconds plus the output's frames times the model's seconds per
frame (measured by this executor on its earlier jobs, else :data:`DEFAULT_SECONDS_PER_FRAME`),
scaled by the frame size and a safety margin, and capped by the plan's maximum
(``LIPSYNC_ZEROGPU_MAX_S``). A job that cannot fit is refused before it starts
(:class:`GpuWindowTooShort`, saying how long the media may be).

Stage progress and cancel cross the process boundary through the :class:`Relay` folder
(a progress file the window writes, a cancel flag the server writes), the same on ZeroGPU
and in the tests' fork transport. Without ZeroGPU hardware ``spaces.GPU`` is a no-op and
the function runs in the server's own thread.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import pickle
import shutil
import tempfile
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobs.executors import CancelFn, Executor, ProgressFn
from jobs.work import GenerationJob, generate, score_here, sendable_error
from pipeline.errors import LipSyncError
from pipeline.options import RunResult

log = logging.getLogger(__name__)

# Seconds of a ZeroGPU window per output frame at 1280x720, before any job was measured: the
# whole run loop goes inside the window (decode, track, generate, encode). Conservative
# guesses from this project's 2-core CPU figures (README, Benchmarks), not GPU measurements.
DEFAULT_SECONDS_PER_FRAME = {"passthrough": 0.02, "baseline": 0.04, "wav2lip": 0.05}
REFERENCE_PIXELS = 1280 * 720  # the frame size the seconds per frame are counted at
MIN_PIXEL_SCALE = 0.25  # a small frame still costs a quarter of a 720p one (fixed per-frame work)
DEFAULT_MAX_S = 300.0  # ZeroGPU's largest window per call (5 min, "subject to change")
DEFAULT_STARTUP_S = 15.0  # fork, CUDA init, loading the model inside the window
DEFAULT_MARGIN = 1.5  # the window asked = the estimate times this
MEASURED_JOBS = 10  # recent jobs per model whose rates inform the next estimate
RELAY_POLL_S = 0.25  # how often the server reads progress and passes on a cancel


class GpuWindowTooShort(LipSyncError):
    """The job would need more GPU time than one ZeroGPU window may last."""


class GpuWindowError(LipSyncError):
    """The ZeroGPU window ended without a result (aborted, quota, the worker died)."""


@dataclass(frozen=True)
class WindowPlan:
    """How large a window to ask for, from ``LIPSYNC_ZEROGPU_*`` settings: ``startup_s`` +
    frames x seconds per frame, times ``margin``, at most ``max_s``."""

    max_s: float = DEFAULT_MAX_S  # the plan's longest window per call
    startup_s: float = DEFAULT_STARTUP_S  # fork, CUDA init, model load
    margin: float = DEFAULT_MARGIN  # safety factor on the estimate
    seconds_per_frame: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SECONDS_PER_FRAME))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WindowPlan:
        """``LIPSYNC_ZEROGPU_MAX_S``, ``_STARTUP_S``, ``_MARGIN`` and ``_SECONDS_PER_FRAME``
        (``model=seconds,...``, merged over the defaults); SettingsError naming a bad one."""
        from jobs.settings import SettingsError, setting_number

        env = os.environ if env is None else env

        def number(name: str, default: float) -> float:
            return setting_number(env, name, default, minimum=0.001)

        rates = dict(DEFAULT_SECONDS_PER_FRAME)
        for item in filter(None, (p.strip() for p in (env.get("LIPSYNC_ZEROGPU_SECONDS_PER_FRAME") or "").split(","))):
            model, _, value = item.partition("=")
            try:
                rates[model.strip()] = float(value)
            except ValueError:
                raise SettingsError(f"LIPSYNC_ZEROGPU_SECONDS_PER_FRAME: {item!r} is not model=seconds") from None
        return cls(max_s=number("LIPSYNC_ZEROGPU_MAX_S", DEFAULT_MAX_S),
                   startup_s=number("LIPSYNC_ZEROGPU_STARTUP_S", DEFAULT_STARTUP_S),
                   margin=number("LIPSYNC_ZEROGPU_MARGIN", DEFAULT_MARGIN), seconds_per_frame=rates)


@dataclass(frozen=True)
class Window:
    """The window asked for one job and how it was reckoned."""

    seconds: float
    frames: int
    seconds_per_frame: float  # at the job's frame size
    model: str


def pixel_scale(width: int, height: int) -> float:
    return max(MIN_PIXEL_SCALE, width * height / REFERENCE_PIXELS)


def media_frames(video: str, audio: str) -> tuple[int, int, int, float]:
    """``(output frames, width, height, fps)``: the output lasts as long as the speech, at the
    face video's rate (a still photo's: ``pipeline.run.STILL_FPS``). Raises InvalidMedia."""
    from pipeline.media.probe import probe
    from pipeline.run import STILL_FPS

    vinfo, ainfo = probe(video), probe(audio)
    fps = STILL_FPS if vinfo.is_image or vinfo.video is None else vinfo.video.fps
    width, height = vinfo.video.display_size if vinfo.video is not None else (0, 0)
    seconds = ainfo.duration_s or 0.0
    return max(1, math.ceil(seconds * fps)), width, height, fps


@dataclass(frozen=True)
class Relay:
    """A folder both sides of the window see: progress one way, a cancel flag the other."""

    folder: str

    @property
    def progress_path(self) -> str:
        return os.path.join(self.folder, "progress.json")

    @property
    def cancel_path(self) -> str:
        return os.path.join(self.folder, "cancel")

    def report(self, stage: str, fraction: float) -> None:
        """(inside the window) the run loop's progress, written atomically."""
        tmp = f"{self.progress_path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump([stage, float(fraction)], f)
        os.replace(tmp, self.progress_path)

    def cancelled(self) -> bool:
        """(inside the window) whether the server asked the job to stop."""
        return os.path.exists(self.cancel_path)

    def read(self) -> tuple[str, float] | None:
        try:
            with open(self.progress_path, encoding="utf-8") as f:
                stage, fraction = json.load(f)
        except (OSError, ValueError):
            return None
        return str(stage), float(fraction)

    def cancel(self) -> None:
        Path(self.cancel_path).touch()


@dataclass(frozen=True)
class WindowOutcome:
    """What comes back out of the window (picklable): the result or the job's own error."""

    result: RunResult | None
    error: BaseException | None
    seconds: float  # wall time of the run inside the window


def window_duration(job: GenerationJob, relay: Relay, window_s: float) -> int:
    """``spaces.GPU``'s ``duration``: called with the GPU function's own arguments."""
    return int(math.ceil(window_s))


def run_in_window(job: GenerationJob, relay: Relay, window_s: float) -> WindowOutcome:
    """The GPU function: the run loop alone (no scoring, no history), its failure handed back."""
    t0 = time.monotonic()
    _torch_after_fork()
    try:
        result, _ = generate(replace(job, score=False), progress=relay.report, cancel=relay.cancelled)
    except Exception as exc:  # noqa: BLE001 - handed to the server, which records it
        return WindowOutcome(None, sendable_error(exc), time.monotonic() - t0)
    return WindowOutcome(replace(result, originals={}), None, time.monotonic() - t0)


def _decorate(fn: Callable[..., WindowOutcome]) -> Callable[..., WindowOutcome]:
    """``spaces.GPU(duration=window_duration)(fn)`` where the ``spaces`` package is installed
    (a no-op off ZeroGPU hardware), else ``fn``."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        log.info("no `spaces` package: the zerogpu executor runs jobs in the server's threads")
        return fn
    return spaces.GPU(duration=window_duration)(fn)


gpu_generate = _decorate(run_in_window)

WindowCall = Callable[[GenerationJob, Relay, float], WindowOutcome]


class ZeroGpuExecutor(Executor):
    """Generation in a ZeroGPU window per job; scoring and recording stay in the server."""

    name = "zerogpu"

    def __init__(self, plan: WindowPlan | None = None, *, work_dir: str | None = None,
                 call: WindowCall | None = None) -> None:
        self.plan = plan or WindowPlan()
        self.work_dir = work_dir
        self.call: WindowCall = call or gpu_generate  # the tests pass a fork+pickle transport
        self._rates: dict[str, deque[float]] = {}  # model -> recent seconds per 720p frame
        self._lock = threading.Lock()

    @classmethod
    def create(cls, *, max_jobs: int, work_dir: str | None) -> ZeroGpuExecutor:
        return cls(WindowPlan.from_env(), work_dir=work_dir)

    def start(self) -> None:
        prepare_fork()

    def rate(self, model: str) -> float:
        """Seconds per 720p frame for ``model`` (``auto``: the costliest it may pick)."""
        if model == "auto":
            return max(self.rate("wav2lip"), self.rate("baseline"))
        with self._lock:
            measured = list(self._rates.get(model, ()))
        if measured:
            return max(measured)
        return self.plan.seconds_per_frame.get(model, max(self.plan.seconds_per_frame.values()))

    def window(self, job: GenerationJob) -> Window:
        """The window ``job`` needs; GpuWindowTooShort when it passes the plan's maximum."""
        frames, width, height, fps = media_frames(job.video, job.audio)
        model = job.options.model
        spf = self.rate(model) * pixel_scale(width, height)
        need = (self.plan.startup_s + frames * spf) * self.plan.margin
        if need > self.plan.max_s:
            most_s = max(0.0, self.plan.max_s / self.plan.margin - self.plan.startup_s) / spf / fps
            raise GpuWindowTooShort(
                f"this job needs about {need:.0f} s of GPU time ({frames} frames x {spf:.3f} s per frame "
                f"for model {model!r} at {width}x{height}, plus {self.plan.startup_s:g} s start-up, x"
                f"{self.plan.margin:g} margin), more than the {self.plan.max_s:g} s one ZeroGPU window "
                f"may last (LIPSYNC_ZEROGPU_MAX_S): use speech of at most about "
                f"{most_s:.0f} s, a smaller video, or a faster model")
        return Window(seconds=max(need, 1.0), frames=frames, seconds_per_frame=spf, model=model)

    def call_args(self, job: GenerationJob, relay: Relay, window: Window) -> tuple[Any, ...]:
        """The GPU function's exact arguments: ``job`` with the window as its time limit."""
        limit = window.seconds if job.options.timeout_s is None else min(job.options.timeout_s, window.seconds)
        return (replace(job, score=False, options=replace(job.options, timeout_s=limit)), relay, window.seconds)

    def run(self, job: GenerationJob, *, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None) -> tuple[RunResult, Any]:
        window = self.window(job)
        log.info("job %s: asking a ZeroGPU window of %.0f s (%d frames x %.3f s, model %s)",
                 job.job_id, window.seconds, window.frames, window.seconds_per_frame, window.model)
        if progress is not None:
            progress("gpu", 0.0)
        relay = Relay(tempfile.mkdtemp(prefix=f"zerogpu-{uuid.uuid4().hex[:8]}-", dir=self.work_dir))
        args = self.call_args(job, relay, window)
        prepare_fork()
        try:
            pickle.dumps(args)  # a bug here must fail the job with its reason, not the window
            outcome = self._call_with_relay(args, relay, progress, cancel)
        finally:
            shutil.rmtree(relay.folder, ignore_errors=True)
        if outcome.error is not None:
            raise outcome.error
        if outcome.result is None:
            raise GpuWindowError("the ZeroGPU window returned neither a result nor an error")
        self._measure(outcome.result)
        return score_here(job, outcome.result, progress)

    def _call_with_relay(self, args: tuple[Any, ...], relay: Relay, progress: ProgressFn | None,
                         cancel: CancelFn | None) -> WindowOutcome:
        stop = threading.Event()
        # in this context: a UI progress callback (gr.Progress) needs the request's context
        pump = threading.Thread(target=contextvars.copy_context().run,
                                args=(_pump, relay, progress, cancel, stop), name="zerogpu-relay", daemon=True)
        pump.start()
        try:
            return self.call(*args)
        except LipSyncError:
            raise
        except Exception as exc:  # noqa: BLE001 - spaces' own errors (gr.Error "GPU task aborted", quota)
            raise GpuWindowError(f"the ZeroGPU window ended without a result: {type(exc).__name__}: "
                                 f"{getattr(exc, 'message', None) or exc}") from None
        finally:
            stop.set()
            pump.join()

    def _measure(self, result: RunResult) -> None:
        if not result.frames or not result.total_s:
            return
        rate = result.total_s / result.frames / pixel_scale(result.width, result.height)
        with self._lock:
            self._rates.setdefault(result.model_used, deque(maxlen=MEASURED_JOBS)).append(rate)
        log.info("model %s: %.4f s per 720p frame in the window", result.model_used, rate)


def prepare_fork() -> None:
    """Settle, in the server, what a forked window must not redo: OpenCV's thread count
    (``cv2.setNumThreads`` in a fork of a process whose OpenCV pool has run deadlocks;
    set once here, the child inherits it and never calls it), and numpy's BLAS threads
    likewise, and glibc's allocator settings."""
    from pipeline.device import configure_process

    configure_process()


def _torch_after_fork() -> None:
    """(inside the window) torch on one CPU thread: a fork of a server whose torch has run its
    OpenMP pool (scoring's SyncNet, a model loaded there) hangs in its first parallel region
    with more (the Wav2Lip fork test hung 240 s at 2 threads); the window's compute belongs on
    the GPU. Settled before the generator's own ``configure_cpu_threads``, which then keeps it."""
    if "torch" not in sys.modules:
        return
    import torch

    from pipeline.device import configure_cpu_threads

    configure_cpu_threads()  # cached from here on: a later call does not raise the count again
    torch.set_num_threads(1)


def _pump(relay: Relay, progress: ProgressFn | None, cancel: CancelFn | None, stop: threading.Event) -> None:
    """(server side) pass the window's progress on and a cancel in, until ``stop``."""
    last, cancelled = None, False
    while True:
        done = stop.is_set()  # a last pass after the window ended: its final progress
        if cancel is not None and not cancelled and cancel():  # at once, then every poll: a
            relay.cancel()  # cancel already asked for reaches even a window shorter than a poll
            cancelled = True
        seen = relay.read()
        if progress is not None and seen is not None and seen != last:
            last = seen
            progress(*seen)
        if done:
            return
        stop.wait(RELAY_POLL_S)
