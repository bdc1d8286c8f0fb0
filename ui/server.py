"""The FastAPI app the Gradio UI is mounted on (:func:`create_app`): /healthz, /readyz, /metrics.

- ``/healthz``: the process answers (always 200 while it serves).
- ``/readyz``: 200 when a generator and a face tracker resolve, the job database takes
  a write transaction and the executor can run jobs (a Ray cluster is reachable); 503 with
  the failing check otherwise.
- ``/metrics``: Prometheus text format through ``prometheus_client`` (a collector read at
  each scrape): jobs by status, stage duration histograms from the recorded stages, Gradio
  queue depth and running events, GPU memory (nvidia-smi: the server never touches CUDA).
  With ``LIPSYNC_AUTH`` set it needs the same user and password as HTTP Basic auth
  (FastAPI's ``HTTPBasic``); /healthz and /readyz stay open for orchestrator probes and
  carry no path (details go to the log).
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import fastapi
import gradio as gr
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.examples import examples_dir
from jobs.suites import SUITES_FOLDER
from jobs.settings import Settings
from pipeline.device import MIB, nvidia_gpus
from pipeline.weights_report import latentsync_summary, weights_report
from storage.db import write_transaction
from storage.jobs import JOBS_FOLDER
from storage.records import ACTIVE, TERMINAL
from ui.blocks import build_blocks, make_context
from ui.cancels import QueuedCancelRecorder
from ui.context import GENERATION_GROUP, AppContext
from ui.errors import without_paths
from ui.privacy import PrivateJobFiles

log = logging.getLogger(__name__)

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)  # s
TRACKERS = ("insightface", "dlib")
WRITE_PROBE_BYTES = 64 * 1024  # /readyz writes this much in the data folder: a full disk fails it


def readiness(ctx: AppContext) -> dict[str, Any]:
    """``{"ready": bool, "checks": {name: {"ok": bool, "detail": str}}}``."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        rows = {r["name"]: r for r in weights_report(allow_download=False)}
        trackers = [n for n in TRACKERS if rows.get(n, {}).get("found")]
        w2l = rows.get("wav2lip", {}).get("found", False)
        checks["models"] = {
            "ok": bool(trackers),
            "detail": (f"face tracker: {', '.join(trackers) or 'none found'}; generator: "
                       + ("wav2lip weights found" if w2l else "baseline (no Wav2Lip weights)")
                       + f"; latentsync: {latentsync_summary(list(rows.values()))}"),
        }
    except Exception as exc:  # noqa: BLE001 - a readiness probe reports, never raises
        checks["models"] = {"ok": False, "detail": f"{type(exc).__name__}: {without_paths(str(exc))}"}
    try:
        with ctx.store.connection() as db, write_transaction(db):
            pass
        ctx.settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=ctx.settings.data_dir) as probe:  # read-only or full?
            probe.write(bytes(WRITE_PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
        checks["database"] = {"ok": True, "detail": "the job database and its folder take writes"}
    except Exception as exc:  # noqa: BLE001 - no path in this unauthenticated answer: the log has it
        log.warning("readiness: the job database %s or its folder cannot be written", ctx.settings.db_path,
                    exc_info=True)
        checks["database"] = {"ok": False, "detail": "the job database or its folder cannot be written: "
                              f"{type(exc).__name__}: {without_paths(str(exc))}"}
    if ctx.executor is not None:
        try:
            ok, detail = ctx.executor.health()
        except Exception as exc:  # noqa: BLE001 - a readiness probe reports, never raises
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks["executor"] = {"ok": ok, "detail": without_paths(detail)}
    return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}


class JobMetrics(Collector):
    """The app's metrics, read from the job history and Gradio's queue at each scrape."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        with ctx.store.connection() as db:
            counts = dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
        jobs = GaugeMetricFamily("lipsync_jobs", "Jobs in the history by status.", labels=["status"])
        for status in (*ACTIVE, *TERMINAL):
            jobs.add_metric([status], float(counts.get(status, 0)))
        yield jobs
        yield self._stage_histogram()
        q = ctx.queue_depth()
        gen = q["groups"].get(GENERATION_GROUP, {})
        for name, help_text, key in (("lipsync_queue_waiting", "Events waiting in Gradio's queue.", "waiting"),
                                     ("lipsync_events_running", "Events running now.", "running")):
            family = GaugeMetricFamily(name, help_text, labels=["group"])
            family.add_metric(["all"], float(q[key]))
            family.add_metric([GENERATION_GROUP], float(gen.get(key, 0)))
            yield family
        yield GaugeMetricFamily("lipsync_generation_slots", "Generation jobs allowed in flight at once.",
                                value=float(ctx.settings.max_jobs))
        gpu = GaugeMetricFamily("lipsync_gpu_memory_bytes", "GPU memory used and total (absent without "
                                "an NVIDIA GPU; read by nvidia-smi, not CUDA).", labels=["gpu", "kind"])
        for g in nvidia_gpus():
            gpu.add_metric([str(g["index"]), "used"], g["used_mb"] * MIB)
            gpu.add_metric([str(g["index"]), "total"], g["total_mb"] * MIB)
        yield gpu

    def _stage_histogram(self) -> HistogramMetricFamily:
        bucket_sql = ", ".join(f"sum(seconds <= {b!r})" for b in STAGE_BUCKETS)
        with self.ctx.store.connection() as db:
            rows = db.execute(f"SELECT stage, count(*), coalesce(sum(seconds), 0), {bucket_sql} "
                              "FROM job_stages GROUP BY stage ORDER BY stage").fetchall()
        family = HistogramMetricFamily("lipsync_stage_seconds", "Seconds each recorded job spent per "
                                       "pipeline stage.", labels=["stage"])
        for stage, count, total, *cumulative in rows:
            buckets = [(f"{le:g}", float(n or 0)) for le, n in zip(STAGE_BUCKETS, cumulative)]
            family.add_metric([stage], [*buckets, ("+Inf", float(count))], sum_value=float(total))
        return family


def metrics_registry(ctx: AppContext) -> CollectorRegistry:
    """The registry /metrics serves (made once per server: :class:`JobMetrics` reads the live
    state at each scrape); ``generate_latest(registry)`` is the body in Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetrics(ctx))
    return registry


def metrics_auth(auth: tuple[str, str] | None) -> Callable[..., None]:
    """A FastAPI dependency: HTTP Basic with ``auth`` (FastAPI's HTTPBasic), or nothing without it."""
    basic = HTTPBasic(realm="LipSync Lab metrics", auto_error=False)

    def check(credentials: HTTPBasicCredentials | None = fastapi.Depends(basic)) -> None:
        if auth is None:
            return
        ok = credentials is not None and \
            secrets.compare_digest(credentials.username.encode(), auth[0].encode()) and \
            secrets.compare_digest(credentials.password.encode(), auth[1].encode())
        if not ok:
            raise fastapi.HTTPException(status_code=401, detail="login required",
                                        headers={"WWW-Authenticate": 'Basic realm="LipSync Lab metrics"'})

    return check


def make_server(ctx: AppContext) -> fastapi.FastAPI:
    """The FastAPI app with the ops routes; app.py mounts Gradio on it at "/"."""
    app = fastapi.FastAPI(title="LipSync Lab", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        body = readiness(ctx)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    registry = metrics_registry(ctx)

    @app.get("/metrics", dependencies=[fastapi.Depends(metrics_auth(ctx.settings.auth))])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def create_app(settings: Settings, *, ctx: AppContext | None = None) -> fastapi.FastAPI:
    """The FastAPI server with the ops routes and the Gradio app mounted at "/" (``ctx``:
    an opened context whose Blocks are built, as app.py keeps them across reloads)."""
    ctx = ctx or make_context(settings)
    blocks = ctx.blocks or build_blocks(ctx)
    server = make_server(ctx)
    server.add_middleware(QueuedCancelRecorder, ctx=ctx)  # records cancels of queued jobs
    server.add_middleware(PrivateJobFiles, ctx=ctx)  # on a public Space: no fetching job files by path
    return gr.mount_gradio_app(
        server, blocks, path="/", auth=settings.auth, root_path=settings.root_path,
        auth_message="LipSync Lab: log in to review jobs" if settings.auth else None,
        max_file_size=settings.max_file_size,
        # the examples, the job folders <data_dir>/jobs/<id>/ and suite runs' files: never jobs.db
        allowed_paths=[os.fspath(examples_dir(settings.data_dir).resolve()),
                       os.fspath((settings.data_dir / JOBS_FOLDER).resolve()),
                       os.fspath((settings.data_dir / SUITES_FOLDER).resolve())],  # suite grids, exports
        show_error=False, footer_links=["api", "settings"])
