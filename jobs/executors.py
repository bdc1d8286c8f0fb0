"""Executors: where a job's generation runs, behind one interface.

An :class:`Executor` runs a :class:`~jobs.work.GenerationJob` (input and output paths and
the options) with progress and cancel, and returns ``(RunResult, Scores or None)``. The
service records the job around it, so an executor never touches the history. Built in:

- ``threads``: in this process, on the caller's thread (:class:`InProcessExecutor`);
- ``workers``: in long-lived worker processes, so a native crash ends one job, never the
  server (:class:`jobs.workers.WorkerPool`); the app's /score runs there too;
- ``zerogpu``: in a Hugging Face ZeroGPU window per job (``spaces.GPU``), scoring outside
  it (:class:`jobs.zerogpu.ZeroGpuExecutor`).
- ``ray``: on a Ray cluster through Ray Serve (:class:`jobs.ray_executor.RayExecutor`,
  chosen by ``LIPSYNC_RAY_ADDRESS``; the only module that imports ray, with ``jobs.ray_serve``).

A new home for generation (a Ray cluster) is one more class here or in a
module of its own, registered in :data:`EXECUTORS`; nothing above this interface changes.
"""

from __future__ import annotations

import importlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from jobs.work import GenerationJob, ScoreJob, generate, score_job, warm_up
from pipeline.options import RunResult

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]


class Executor(ABC):
    """Runs generation jobs; ``start`` loads ahead of the first job, ``close`` frees it all."""

    name: str

    @abstractmethod
    def run(self, job: GenerationJob, *, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None) -> tuple[RunResult, Any]:
        """Run ``job``; domain errors (InvalidMedia, NoFaceFound, JobCancelled, ...) propagate."""

    def score(self, job: ScoreJob) -> dict[str, Any]:
        """Scores of ``job.generated`` against ``job.original`` as JSON (the app's /score);
        by default in this process, where an executor isolates untrusted media it overrides this."""
        return score_job(job)[0]

    @classmethod
    def create(cls, *, max_jobs: int, work_dir: str | None) -> Executor:
        """The executor for ``max_jobs`` jobs at once, with its files under ``work_dir``."""
        return cls()

    def start(self) -> None:
        """Get ready for the first job (load models, start processes); optional."""

    def close(self) -> None:
        """Release what ``start`` and the jobs took; optional."""

    def health(self) -> tuple[bool, str]:
        """(whether jobs can run now, why) for ``/readyz``; a remote executor checks its cluster."""
        return True, f"generation runs in executor {self.name!r}"


class InProcessExecutor(Executor):
    """Generation on the calling thread of this process: jobs share its loaded models."""

    name = "threads"

    def run(self, job: GenerationJob, *, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None) -> tuple[RunResult, Any]:
        return generate(job, progress=progress, cancel=cancel)

    _warming: threading.Thread | None = None

    def start(self) -> None:
        # Not a daemon: the interpreter joins it before finalising. A daemon thread still in
        # native code at exit (cv2, dlib) is ended by pthread_exit there, and libstdc++ aborts
        # the process ("terminate called without an active exception").
        self._warming = threading.Thread(target=warm_up, name="warm-up")
        self._warming.start()

    def close(self) -> None:
        if self._warming is not None:
            self._warming.join()


# name -> (module, class), imported only when chosen
EXECUTORS: dict[str, tuple[str, str]] = {
    "threads": ("jobs.executors", "InProcessExecutor"),
    "workers": ("jobs.workers", "WorkerPool"),
    "zerogpu": ("jobs.zerogpu", "ZeroGpuExecutor"),
    "ray": ("jobs.ray_executor", "RayExecutor"),  # LIPSYNC_RAY_ADDRESS; imports ray only when chosen
}


def make_executor(name: str, *, max_jobs: int = 1, work_dir: str | None = None) -> Executor:
    """The executor ``name`` (one of :data:`EXECUTORS`) for ``max_jobs`` jobs at once."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}: choose one of {', '.join(sorted(EXECUTORS))}")
    module, attr = EXECUTORS[name]
    cls: type[Executor] = getattr(importlib.import_module(module), attr)
    return cls.create(max_jobs=max_jobs, work_dir=work_dir)
