"""The ``ray`` executor: generation on a Ray cluster through Ray Serve (``jobs/ray_serve.py``).

The app stays the one front door: its queue, the SQLite history (it stays the only writer),
scoring and the UI are unchanged. :class:`RayExecutor` connects to ``LIPSYNC_RAY_ADDRESS``
at start (in the background: ``/readyz`` says 503 and why until it is connected), deploys
the Serve application, and for each job packs the inputs as bytes (with ``LIPSYNC_SHARED_DIR``:
as paths, in a folder of the job's own there), awaits the Generation deployment's call on its
own event loop thread, writes the outputs where the job wants them, removes the job's shared
folder (also when the job fails or is cancelled) and scores the outputs here.

Faults: a node (or replica) that dies mid-job surfaces as ``ActorDiedError`` /
``ActorUnavailableError``; the job is re-run ``LIPSYNC_RAY_RETRIES`` times (default once)
on a healthy replica, since a job is idempotent, and otherwise fails with ``NodeLost``
("the generation node was lost"). A cancel calls the Serve response's ``cancel()``, which
reaches the replica (it kills the job's ffmpeg process groups and frees the slot). A cluster
that cannot be reached at start refuses jobs with ``ClusterUnavailable``, unless
``LIPSYNC_RAY_FALLBACK=local`` runs them in local worker processes instead.

This module and ``jobs.ray_serve`` are the only ones that import Ray, and only when this
executor is chosen (``jobs.executors.EXECUTORS``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from dataclasses import replace
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from ray.serve.exceptions import RequestCancelledError

from jobs.executors import CancelFn, Executor, ProgressFn, make_executor
from jobs.ray_payload import JobPayload, JobReply, sweep_stale_jobs
from jobs.settings import RaySettings, ray_settings_from_env
from jobs.work import GenerationJob, score_here
from pipeline.errors import ClusterUnavailable, JobCancelled, JobTimeout, NodeLost
from pipeline.options import RunResult

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting job checks its cancel flag
CONNECT_WAIT_S = 120.0  # how long a job waits for the start-up connection before it is refused
TIMEOUT_GRACE_S = 30.0  # past a job's own time limit before the app cancels its call
NODE_LOST = "the generation node was lost"
PROBE_TIMEOUT_S = 5.0  # a TCP connect to the head: ray.init itself waits minutes on a dead address


def probe_address(address: str) -> None:
    """Raise ConnectionError unless something listens at ``address`` ("host:port" or
    "ray://host:port"; "auto" is left to ray.init, which fails fast without a local cluster)."""
    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"nothing answers at {target} ({type(exc).__name__}: {exc})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class RayExecutor(Executor):
    """Generation jobs on the Ray cluster of ``settings`` (see the module's docstring)."""

    name = "ray"

    def __init__(self, settings: RaySettings, *, max_jobs: int = 1, work_dir: str | None = None) -> None:
        self.settings = settings
        self._max_jobs, self._work_dir = max_jobs, work_dir
        self._connected = threading.Event()
        self._state, self._reason = "starting", f"connecting to the Ray cluster at {settings.address}"
        self._handle: Any = None
        self._fallback: Executor | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ray-calls", daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, *, max_jobs: int, work_dir: str | None) -> RayExecutor:
        return cls(ray_settings_from_env(), max_jobs=max_jobs, work_dir=work_dir)

    # ---- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and deploy in the background (the server answers /readyz meanwhile), after
        removing the shared folder's job folders that an app which died mid-job left there."""
        if self.settings.shared_dir is not None:
            sweep_stale_jobs(self.settings.shared_dir)
        threading.Thread(target=self.connect, name="ray-connect", daemon=True).start()

    def connect(self) -> None:
        """Connect to the cluster and deploy (or find) the Serve application; on failure
        remember why (and start the local fallback when it is asked for)."""
        s = self.settings
        try:
            if not ray.is_initialized():
                probe_address(s.address)
                ray.init(address=s.address, namespace="lipsync", log_to_driver=False,
                         logging_level=logging.WARNING)
            if s.deploy:
                from jobs.ray_serve import deploy

                self._handle = deploy(s)
            else:
                self._handle = serve.get_app_handle(s.app_name)
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            gpus = ray.cluster_resources().get("GPU", 0)
            self._state = "ready"
            self._reason = (f"Ray cluster at {s.address}: Serve app {s.app_name!r}, {len(nodes)} node(s), "
                            f"{gpus:g} GPU(s)")
            log.info("%s", self._reason)
        except Exception as exc:  # noqa: BLE001 - an unreachable cluster is reported, not raised
            self._state = "unreachable"
            self._reason = f"the Ray cluster at {s.address} is unreachable: {type(exc).__name__}: {_first_line(exc)}"
            log.error("%s", self._reason)
            if s.fallback == "local":
                log.warning("LIPSYNC_RAY_FALLBACK=local: jobs run in local worker processes")
                self._fallback = make_executor("workers", max_jobs=self._max_jobs, work_dir=self._work_dir)
                self._fallback.start()
        finally:
            self._connected.set()

    def health(self) -> tuple[bool, str]:
        if self._state == "ready":
            return True, self._reason
        if self._fallback is not None:
            return True, f"{self._reason}; jobs run locally (LIPSYNC_RAY_FALLBACK=local)"
        if self._state == "starting":
            return False, self._reason
        return False, f"{self._reason}; jobs are refused"

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()
        self._loop.call_soon_threadsafe(self._loop.stop)

    # ---- a job -----------------------------------------------------------------------------

    def run(self, job: GenerationJob, *, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None) -> tuple[RunResult, Any]:
        self._connected.wait(CONNECT_WAIT_S)
        if self._fallback is not None:
            result, scores = self._fallback.run(job, progress=progress, cancel=cancel)
            return replace(result, host={**(result.host or {}), "ray_fallback": self._reason}), scores
        if self._handle is None:
            raise ClusterUnavailable(f"{self.health()[1]}. Start the cluster (README, 'Scale out') and "
                                     "restart the app, or set LIPSYNC_RAY_FALLBACK=local")
        if progress is not None:
            progress("cluster", 0.02)
        payload = self.pack(job)
        try:
            reply = self.dispatch(payload, cancel=cancel, timeout_s=job.options.timeout_s)
            self.save_outputs(reply, job)
        finally:  # saved, failed or cancelled: nothing of the job stays in the shared folder
            payload.remove_shared()
        return self.scored(reply, job, progress=progress)

    def pack(self, job: GenerationJob) -> JobPayload:
        """The job's inputs as bytes (or shared paths: ``remove_shared()`` once it has ended)
        and its options, ready to dispatch."""
        return JobPayload.pack(job.job_id, job.video, job.audio, replace(job.options, work_dir=None),
                               side_by_side=job.side_by_side is not None, shared_dir=self.settings.shared_dir)

    def dispatch(self, payload: JobPayload, *, cancel: CancelFn | None = None,
                 timeout_s: float | None = None) -> JobReply:
        """Run ``payload`` on a Generation replica; re-run it on a healthy one (up to
        ``settings.retries`` times) when its node is lost."""
        for attempt in range(1, self.settings.retries + 2):
            tried = replace(payload, attempt=attempt)
            try:
                return self._call(tried, cancel, timeout_s)
            except NodeLost as exc:
                tried.remove_reply()  # what the lost attempt wrote; the inputs stay for the next one
                if attempt > self.settings.retries:
                    raise
                log.warning("job %s: %s; re-running it on a healthy replica (attempt %d of %d)",
                            payload.job_id, exc, attempt + 1, self.settings.retries + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def save_outputs(reply: JobReply, job: GenerationJob) -> None:
        """Write the reply's files where the job wants them (sha256 checked as they arrive)."""
        targets = {"video": job.output, "side_by_side": job.side_by_side}
        for name, blob in reply.outputs.items():
            if targets.get(name):
                blob.save(targets[name])

    def scored(self, reply: JobReply, job: GenerationJob, *, progress: ProgressFn | None = None
               ) -> tuple[RunResult, Any]:
        """The reply's result for the job's saved outputs, with where it ran, scored here."""
        host = {**reply.host, "executor": self.name, "received_sha256": reply.received}
        return score_here(job, replace(reply.result, output_path=job.output, host=host), progress)

    def _call(self, payload: JobPayload, cancel: CancelFn | None, timeout_s: float | None) -> JobReply:
        """One Serve call, awaited on the executor's loop; this thread watches ``cancel``."""
        stop = threading.Event()
        future = asyncio.run_coroutine_threadsafe(self._remote(payload, stop), self._loop)
        deadline = (timeout_s + TIMEOUT_GRACE_S) if timeout_s else None
        waited = 0.0
        while True:
            try:
                return future.result(timeout=POLL_S)
            except concurrent.futures.TimeoutError:
                waited += POLL_S
                if not stop.is_set() and cancel is not None and cancel():
                    stop.set()
                if deadline is not None and waited > deadline and not stop.is_set():
                    stop.set()
                    try:
                        future.result()
                    except JobCancelled:
                        pass
                    raise JobTimeout(f"the job passed its {timeout_s:g} s time limit on the cluster and was "
                                     "cancelled there") from None

    async def _remote(self, payload: JobPayload, stop: threading.Event) -> JobReply:
        response = self._handle.run.remote(payload)
        task = asyncio.ensure_future(_result(response))
        while not task.done():
            await asyncio.wait({task}, timeout=POLL_S)
            if stop.is_set() and not task.done():
                await asyncio.to_thread(response.cancel)  # reaches the replica
                break
        try:
            return await task
        except (RequestCancelledError, TaskCancelledError, asyncio.CancelledError):
            raise JobCancelled("cancelled: the replica stopped the job and freed its slot") from None
        except RayActorError as exc:
            raise NodeLost(f"{NODE_LOST} ({type(exc).__name__}) during attempt {payload.attempt}: "
                           f"{_first_line(exc)}") from None
        except RayTaskError as exc:  # the job's own error (NoFaceFound, ...): without Ray's traceback
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise


async def _result(response: Any) -> JobReply:
    return await response
