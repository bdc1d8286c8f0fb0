"""The FastAPI app the Gradio UI is mounted on (:func:`create_app`): /healthz, /readyz, /metrics.

- ``/healthz``: the process answers (always 200 while it serves).
- ``/readyz``: 200 when a generator and a face tracker resolve, the job database takes
  a write transaction and the executor can run jobs (a Ray cluster is reachable); 503 with
  the failing check otherwise.
- ``/metrics``: Prometheus text format: jobs by status, stage duration histograms from
  the recorded stages, Gradio queue depth and running events, GPU memory. With
  ``LIPSYNC_AUTH`` set it needs the same user and password as HTTP Basic auth (it is
  derived from the job history); /healthz and /readyz stay open for orchestrator probes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable
from typing import Any

import fastapi
import gradio as gr
from fastapi.responses import JSONResponse, PlainTextResponse

from jobs.examples import examples_dir
from jobs.settings import Settings

from pipeline.weights import weights_report
from storage.db import write_transaction
from storage.jobs import JOBS_FOLDER
from storage.records import ACTIVE, TERMINAL
from ui.blocks import build_blocks, make_context
from ui.cancels import QueuedCancelRecorder
from ui.context import GENERATION_GROUP, AppContext

log = logging.getLogger(__name__)

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)  # s
TRACKERS = ("insightface", "dlib")
WRITE_PROBE_BYTES = 64 * 1024  # /readyz writes this much in the data folder: a full disk fails it
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
                       + ("wav2lip weights found" if w2l else "baseline (no Wav2Lip weights)")),
        }
    except Exception as exc:  # noqa: BLE001 - a readiness probe reports, never raises
        checks["models"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    try:
        with ctx.store.connection() as db, write_transaction(db):
            pass
        ctx.settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=ctx.settings.data_dir) as probe:  # read-only or full?
            probe.write(bytes(WRITE_PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
        checks["database"] = {"ok": True, "detail": f"{ctx.settings.db_path} is writable"}
    except Exception as exc:  # noqa: BLE001
        checks["database"] = {"ok": False, "detail": f"the job database {ctx.settings.db_path} or its "
                              f"folder cannot be written: {type(exc).__name__}: {exc}"}
    if ctx.executor is not None:
        try:
            ok, detail = ctx.executor.health()
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks["executor"] = {"ok": ok, "detail": detail}
    return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _metric(lines: list[str], name: str, kind: str, help_text: str,
            samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for suffix, labels, value in samples:
        lines.append(f"{name}{suffix}{_labels(**labels)} {value:g}")


def _stage_histograms(ctx: AppContext) -> list[tuple[str, dict[str, str], float]]:
    bucket_sql = ", ".join(f"sum(seconds <= {b!r})" for b in STAGE_BUCKETS)
    with ctx.store.connection() as db:
        rows = db.execute(f"SELECT stage, count(*), coalesce(sum(seconds), 0), {bucket_sql} "
                          "FROM job_stages GROUP BY stage ORDER BY stage").fetchall()
    samples = []
    for stage, count, total, *cumulative in rows:
        for le, n in zip(STAGE_BUCKETS, cumulative):
            samples.append(("_bucket", {"stage": stage, "le": f"{le:g}"}, float(n or 0)))
        samples.append(("_bucket", {"stage": stage, "le": "+Inf"}, float(count)))
        samples.append(("_sum", {"stage": stage}, float(total)))
        samples.append(("_count", {"stage": stage}, float(count)))
    return samples


def _gpu_memory() -> list[tuple[str, dict[str, str], float]]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append(("", {"gpu": str(i), "kind": "used"}, float(total - free)))
        out.append(("", {"gpu": str(i), "kind": "total"}, float(total)))
    return out


def metrics_text(ctx: AppContext) -> str:
    """The /metrics body in Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    with ctx.store.connection() as db:
        counts = dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    _metric(lines, "lipsync_jobs", "gauge", "Jobs in the history by status.",
            [("", {"status": s}, float(counts.get(s, 0))) for s in (*ACTIVE, *TERMINAL)])
    _metric(lines, "lipsync_stage_seconds", "histogram",
            "Seconds each recorded job spent per pipeline stage.", _stage_histograms(ctx))
    q = ctx.queue_depth()
    gen = q["groups"].get(GENERATION_GROUP, {})
    _metric(lines, "lipsync_queue_waiting", "gauge", "Events waiting in Gradio's queue.",
            [("", {"group": "all"}, float(q["waiting"])),
             ("", {"group": GENERATION_GROUP}, float(gen.get("waiting", 0)))])
    _metric(lines, "lipsync_events_running", "gauge", "Events running now.",
            [("", {"group": "all"}, float(q["running"])),
             ("", {"group": GENERATION_GROUP}, float(gen.get("running", 0)))])
    _metric(lines, "lipsync_generation_slots", "gauge", "Generation jobs allowed in flight at once.",
            [("", {}, float(ctx.settings.max_jobs))])
    _metric(lines, "lipsync_gpu_memory_bytes", "gauge", "GPU memory used and total (absent without CUDA).",
            _gpu_memory())
    return "\n".join(lines) + "\n"


def basic_auth_ok(header: str | None, auth: tuple[str, str] | None) -> bool:
    """Whether an ``Authorization`` header carries ``auth`` as HTTP Basic (always, without auth)."""
    if auth is None:
        return True
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and secrets.compare_digest(user.encode(), auth[0].encode()) and \
        secrets.compare_digest(password.encode(), auth[1].encode())


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

    @app.get("/metrics")
    def metrics(request: fastapi.Request) -> PlainTextResponse:
        if not basic_auth_ok(request.headers.get("authorization"), ctx.settings.auth):
            return PlainTextResponse("login required", status_code=401,
                                     headers={"WWW-Authenticate": 'Basic realm="LipSync Lab metrics"'})
        return PlainTextResponse(metrics_text(ctx), media_type=PROMETHEUS_TYPE)

    return app


def create_app(settings: Settings) -> fastapi.FastAPI:
    """The FastAPI server with the ops routes and the Gradio app mounted at "/"."""
    ctx = make_context(settings)
    blocks = build_blocks(ctx)
    blocks.queue(max_size=settings.queue_size, default_concurrency_limit=settings.max_jobs)
    server = make_server(ctx)
    server.add_middleware(QueuedCancelRecorder, ctx=ctx)  # records cancels of queued jobs
    return gr.mount_gradio_app(
        server, blocks, path="/", auth=settings.auth,
        auth_message="LipSync Lab: log in to review jobs" if settings.auth else None,
        max_file_size=settings.max_file_size,
        # the examples and the job folders <data_dir>/jobs/<id>/ only: never jobs.db or the rest
        allowed_paths=[os.fspath(examples_dir(settings.data_dir).resolve()),
                       os.fspath((settings.data_dir / JOBS_FOLDER).resolve())],
        show_error=True, footer_links=["api", "settings"])
