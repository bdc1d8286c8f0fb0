"""The Ray Serve application that runs generation on a cluster: two deployments.

- ``Generation`` (:class:`GenerationServer`): one generation job per call. The inputs arrive
  as bytes (``jobs.ray_payload``), are written to the replica's own scratch folder, the run
  loop runs there (decode, track, blend, encode: CPU work) and the outputs go back as bytes.
  With a shared folder the inputs are read from the job's folder there (and left for a
  retry) and the outputs go back as paths in the attempt's ``out-<attempt>/`` of that folder,
  which the replica removes itself when the call fails or is cancelled.
  Its face tracker and audio front end load once per replica (``warm_up`` at start). Up to
  ``max_ongoing_requests`` jobs share a replica; the autoscaler adds replicas on load.
- ``Forward`` (:class:`ForwardServer`): the generator's model steps, one model copy per GPU.
  A job's batches come here through ``@serve.batch``: the frames of concurrent jobs go
  through the model together, and each job gets its own outputs back, in order.

A cancelled call (``DeploymentResponse.cancel()`` in the app) raises ``CancelledError`` in
:meth:`GenerationServer.run`: the job's cancel flag is set, its ffmpeg process groups are
killed (``pipeline.media.ffmpeg.ProcessScope``), its thread unwinds, its scratch folder is
removed and the slot is free again. Replicas append their job events (started, cancelled)
as JSON lines to ``events_dir`` when one is set (a folder every node mounts; tests read it).

Deployed by the app (:func:`deploy`) or by KubeRay's RayService from :func:`app_builder`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray import serve

from jobs.ray_payload import FileBlob, JobPayload, JobReply
from jobs.settings import RaySettings, ray_settings_from_env
from jobs.work import GenerationJob, generate, warm_up
from jobs.workers import PROJECT_ROOT
from pipeline.device import device_facts
from pipeline.generators.base import Generator
from pipeline.media.ffmpeg import ProcessScope

log = logging.getLogger(__name__)

GENERATION = "Generation"
FORWARD = "Forward"
MAX_BATCH_LOG = 512  # recent batches a Forward replica remembers for stats()


@dataclass(frozen=True)
class ForwardRequest:
    """One job's items for the generator ``model`` rebuilt from ``spec`` on the Forward replica."""

    job_id: str | None
    model: str
    spec: tuple[tuple[str, Any], ...]
    items: list[Any] = field(repr=False)


def _items_in(requests: list[ForwardRequest]) -> int:
    return sum(len(r.items) for r in requests)


def _where() -> dict[str, Any]:
    """This replica's node id, address, host name and pid."""
    ctx = serve.get_replica_context()
    replica = getattr(getattr(ctx, "replica_id", None), "unique_id", None) or getattr(ctx, "replica_tag", "")
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "replica": str(replica), "pid": os.getpid()}


class ForwardServer:
    """The ``Forward`` deployment: generators' :meth:`Generator.forward` on batches that mix jobs."""

    def __init__(self, batch_size: int = 64, wait_s: float = 0.02) -> None:
        self._generators: dict[tuple[str, tuple[tuple[str, Any], ...]], Generator] = {}
        self._lock = threading.Lock()
        self.loads = 0
        self.batches: deque[list[tuple[str | None, int]]] = deque(maxlen=MAX_BATCH_LOG)
        self.forward.set_max_batch_size(batch_size)
        self.forward.set_batch_wait_timeout_s(wait_s)

    def _generator(self, model: str, spec: tuple[tuple[str, Any], ...]) -> Generator:
        """The generator for (model, spec), built once per replica (its model loads once)."""
        from pipeline.generators.registry import get_generator

        with self._lock:
            key = (model, spec)
            if key not in self._generators:
                self._generators[key] = get_generator(model, **dict(spec))
                self.loads += 1
            return self._generators[key]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.02, batch_size_fn=_items_in)
    async def forward(self, requests: list[ForwardRequest]) -> list[list[Any]]:
        return await asyncio.to_thread(self._run_batch, requests)

    def _run_batch(self, requests: list[ForwardRequest]) -> list[list[Any]]:
        out: list[list[Any]] = [[] for _ in requests]
        groups: dict[tuple[str, tuple[tuple[str, Any], ...]], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.model, r.spec), []).append(i)
        for (model, spec), members in groups.items():
            items = [item for i in members for item in requests[i].items]  # several jobs' frames
            results = self._generator(model, spec).forward(items)
            self.batches.append([(requests[i].job_id, len(requests[i].items)) for i in members])
            start = 0
            for i in members:  # each job's outputs, in its order
                n = len(requests[i].items)
                out[i] = list(results[start:start + n])
                start += n
        return out

    async def stats(self) -> dict[str, Any]:
        return {**_where(), "loads": self.loads, "batches": [list(b) for b in self.batches]}


@dataclass
class _Slot:
    """One running job on a replica."""

    job_id: str | None
    folder: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    scope: ProcessScope = field(default_factory=ProcessScope)


class GenerationServer:
    """The ``Generation`` deployment: whole generation jobs, inputs and outputs as bytes."""

    def __init__(self, forward: Any = None, events_dir: str | None = None, batch_size: int = 64) -> None:
        self._forward = forward  # a DeploymentHandle to Forward, or None: models run here
        self._events = Path(events_dir) if events_dir else None
        self._batch_size = batch_size
        self._running: dict[int, _Slot] = {}
        self._where = _where()
        self._facts = device_facts()
        warm_up()  # the face tracker and audio front end: once per replica, not per job

    async def run(self, payload: JobPayload) -> JobReply:
        loop = asyncio.get_running_loop()
        slot = _Slot(payload.job_id, Path(tempfile.mkdtemp(prefix="lipsync-ray-")))
        self._running[id(slot)] = slot
        self._event("started", payload)
        forward = self._forward_fn(loop, payload.job_id) if self._forward is not None else None
        work = loop.run_in_executor(None, contextvars.copy_context().run, self._work, payload, slot, forward)
        replied = cancelled = False
        try:
            reply = await asyncio.shield(work)
            replied = True
            return reply
        except asyncio.CancelledError:
            cancelled = True
            slot.cancel.set()
            killed = slot.scope.kill()  # a job blocked on a pipe returns at once
            try:
                await work
            except BaseException:  # noqa: BLE001 - the job's own end (JobCancelled, a broken pipe)
                pass
            self._event("cancelled", payload, killed_pids=killed)
            raise
        finally:
            self._running.pop(id(slot), None)
            shutil.rmtree(slot.folder, ignore_errors=True)
            if not replied:  # failed or cancelled: no reply files left behind in the shared folder
                payload.remove_reply()
            if cancelled and payload.job_dir:  # the app has given the job up: should our last write
                with contextlib.suppress(OSError):  # have raced its removal of the job's folder,
                    os.rmdir(payload.job_dir)  # the folder, left empty, goes too (rmdir: only if empty)

    def _work(self, payload: JobPayload, slot: _Slot, forward: Any) -> JobReply:
        """The job, on a thread of the replica: inputs to disk, the run loop, outputs back."""
        with slot.scope:
            video = payload.video.save(slot.folder / "video" / payload.video.name)  # the two may share a name
            audio = payload.audio.save(slot.folder / "audio" / payload.audio.name)
            out = slot.folder / "out"
            job = GenerationJob.of(video, audio, out / "result.mp4",
                                   options=replace(payload.options, work_dir=os.fspath(slot.folder)),
                                   side_by_side=out / "side_by_side.mp4" if payload.side_by_side else None,
                                   score=False, job_id=payload.job_id)
            started = time.time()
            result, _ = generate(job, cancel=slot.cancel.is_set, forward=forward)
        reply_dir = payload.reply_dir  # None: the outputs go back as bytes
        made = {"video": job.output, "side_by_side": job.side_by_side}
        outputs = {name: FileBlob.of(path) if reply_dir is None else FileBlob.copy_in(path, reply_dir)
                   for name, path in made.items() if path is not None}
        host = {**self._facts, **self._where, "peak_rss_mb": result.peak_rss_mb, "attempt": payload.attempt,
                "replica_started": started, "replica_finished": time.time()}
        return JobReply(result=result, outputs=outputs, host=host,  # score=False: no originals nor speech kept
                        received={"video": payload.video.sha256, "audio": payload.audio.sha256})

    def _forward_fn(self, loop: asyncio.AbstractEventLoop, job_id: str | None) -> Any:
        """The job's ForwardFn: its items to the Forward deployment (awaited on the replica's
        loop), in chunks that fit one batch, all at once."""
        async def call(gen: Generator, items: Sequence[Any]) -> list[Any]:
            spec = tuple(sorted(gen.spec().items()))
            size = self._batch_size
            chunks = [ForwardRequest(job_id, gen.name, spec, list(items[i:i + size]))
                      for i in range(0, len(items), size)]
            parts = await asyncio.gather(*(self._forward.forward.remote(c) for c in chunks))
            return [out for part in parts for out in part]

        def forward(gen: Generator, items: Sequence[Any]) -> list[Any]:
            return asyncio.run_coroutine_threadsafe(call(gen, items), loop).result()

        return forward

    def _event(self, kind: str, payload: JobPayload, **extra: Any) -> None:
        if self._events is None:
            return
        line = json.dumps({"event": kind, "job_id": payload.job_id, "attempt": payload.attempt,
                           "time": time.time(), **self._where, **extra})
        self._events.mkdir(parents=True, exist_ok=True)
        with open(self._events / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    async def status(self) -> dict[str, Any]:
        """Where this replica runs and the jobs it runs now."""
        return {**self._where, "running": [s.job_id for s in self._running.values()]}


def build_app(settings: RaySettings, *, cluster_gpus: float = 0.0) -> Any:
    """The bound Serve application for ``settings`` on a cluster with ``cluster_gpus`` GPUs."""
    gpus = settings.gpus if settings.gpus is not None else (1.0 if cluster_gpus > 0 else 0.0)
    env = {"env_vars": {"PYTHONPATH": os.fspath(PROJECT_ROOT)}}  # the project at the same path on every node
    scaling: dict[str, Any] = ({"num_replicas": settings.min_replicas}
                               if settings.min_replicas == settings.max_replicas
                               else {"autoscaling_config": settings.replicas})
    forward = None
    if settings.batch:
        copies = settings.forward_replicas or (max(1, int(cluster_gpus // gpus)) if gpus else 1)  # one per GPU
        forward = serve.deployment(ForwardServer, name=FORWARD).options(
            num_replicas=copies, max_ongoing_requests=max(64, settings.batch_size * 4),
            ray_actor_options={"num_cpus": 0, "num_gpus": gpus, "runtime_env": env},
        ).bind(settings.batch_size, settings.batch_wait_s)
    return serve.deployment(GenerationServer, name=GENERATION).options(
        max_ongoing_requests=settings.max_ongoing, **scaling,
        ray_actor_options={"num_cpus": settings.cpus, "num_gpus": 0.0 if settings.batch else gpus,
                           "runtime_env": env},
    ).bind(forward, os.fspath(settings.events_dir) if settings.events_dir else None, settings.batch_size)


def deploy(settings: RaySettings) -> Any:
    """Deploy (or update) the application on the connected cluster; its Generation handle."""
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
    serve.start(proxy_location="Disabled")
    return serve.run(build_app(settings, cluster_gpus=cluster_gpus), name=settings.app_name,
                     route_prefix=None)


def app_builder(args: dict[str, str] | None = None) -> Any:
    """For ``serveConfigV2`` (KubeRay RayService): ``import_path: jobs.ray_serve:app_builder``,
    ``args`` are LIPSYNC_RAY_* settings by variable name (over the environment's)."""
    env = {**os.environ, "LIPSYNC_RAY_ADDRESS": "auto", **(args or {})}
    return build_app(ray_settings_from_env(env), cluster_gpus=float(ray.cluster_resources().get("GPU", 0.0)))
