"""The Performance tab (storage.reports as plots and tables) and the System tab."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import pandas as pd

from jobs.settings import Settings
from pipeline.device import device_facts
from pipeline.weights_report import weights_report
from storage.reports import build_report
from ui import present
from ui.context import READ_GROUP, AppContext
from ui.errors import user_errors

log = logging.getLogger(__name__)

WEIGHT_COLUMNS = ["model", "available", "where / why not", "how to get it"]


def performance_views(ctx: AppContext) -> dict[str, pd.DataFrame | str]:
    """Every Performance view from one load of the job history."""
    report = build_report(ctx.store)
    show = present.frame_for_display
    pct = show(report.stage_percentiles)
    throughput = show(report.throughput)
    if "hour" in throughput.columns:
        throughput["hour"] = throughput["hour"].astype(str)
    summary = (f"{len(report.history)} jobs · cost at ${report.gpu_hour_usd:.2f} per GPU-hour "
               f"(billable = the generator stage) · quality trend metric {report.metric}, "
               f"windows of {report.window} jobs")
    return {
        "summary": summary, "stage_pct": pct, "rtf": show(report.realtime_factor),
        "throughput": throughput, "failures": show(report.failure_rates),
        "errors": show(report.top_errors), "cost": show(report.cost_summary, digits=6),
        "alerts": show(report.alerts),
    }


def weights_table() -> pd.DataFrame:
    """The System tab's weights: per model whether it is here, where (and the search step that
    found it, and for the LatentSync VAE where its config came from) or why not, and the fix."""
    rows = [{"model": r["label"], "available": "yes" if r["found"] else "no",
             "where / why not": _where(r) if r["found"] else (r["why_not"] or ""),
             "how to get it": "" if r["found"] else (r["fix"] or "")}
            for r in weights_report(allow_download=False)]
    return pd.DataFrame(rows, columns=WEIGHT_COLUMNS)


def _where(row: dict[str, Any]) -> str:
    where = f"{row['where'] or ''} ({row['source']})" if row.get("source") else (row["where"] or "")
    return where + (f"; config: {row['config']}" if row.get("config") else "")


def storage_note(s: Settings) -> str:
    """Whether the history survives a restart, for the System tab."""
    if s.history_lost_at_restart:
        return (" · **this Space has no persistent storage: the job history is lost at every "
                "restart** (attach a storage volume at `/data`)")
    return " · on persistent storage" if s.persistent else ""


def system_markdown(ctx: AppContext) -> str:
    facts = device_facts(gpu=True)
    q = ctx.queue_depth()
    s = ctx.settings
    driver = (f"CUDA {facts['cuda_version']}" if facts.get("cuda_version")
              else f"driver {facts.get('driver_version')}")
    gpu = (f"{facts.get('gpu_model')} · memory used {facts.get('gpu_memory_used_mb')} MiB of "
           f"{facts.get('gpu_memory_total_mb')} MiB · {driver}"
           if facts.get("cuda") else "none (no NVIDIA GPU found): the generator runs on the CPU")
    lines = [
        f"**Device:** {facts.get('cpu_model')} · {facts.get('usable_cores')} usable cores of "
        f"{facts.get('cpu_count')} · torch {facts.get('torch')}",
        f"**GPU:** {gpu}",
        f"**Queue:** {q['waiting']} waiting, {q['running']} running · at most {s.max_jobs} "
        f"generation job(s) at once · queue holds {s.queue_size}",
        f"**Limits:** uploads up to {s.max_upload_mb:g} MB · media up to {s.max_duration_s:g} s and "
        f"{s.max_side} px · job time limit {f'{s.job_timeout_s:g} s' if s.job_timeout_s else 'none'}",
        f"**Job history:** {s.db_path.name} in the data folder · login {'required' if s.auth else 'off'}"
        f"{storage_note(s)}",
        f"**Generation runs in:** executor `{ctx.executor.name if ctx.executor else s.executor}`"
        + (" · each visitor sees only the jobs of their own browser session" if s.private_sessions else ""),
    ]
    return "  \n".join(lines)


def build_performance_tab(ctx: AppContext) -> gr.Tab:
    with gr.Tab("Performance", elem_id="performance-tab") as tab:
        refresh = gr.Button("Refresh")
        summary = gr.Markdown()
        stage_plot = gr.BarPlot(x="stage", y="p50", color="model", label="Median seconds per stage",
                                sort=None)
        stage_pct = gr.Dataframe(label="Seconds per stage and model (p50 / p95 / mean, succeeded jobs)",
                                 interactive=False)
        with gr.Row():
            rtf = gr.Dataframe(label="Real-time factor (processing s / output s; < 1 is faster "
                                     "than real time)", interactive=False)
            failures = gr.Dataframe(label="Failure rate per model", interactive=False)
        throughput_plot = gr.LinePlot(x="hour", y="jobs", label="Jobs finished per hour")
        throughput = gr.Dataframe(label="Throughput per hour", interactive=False)
        with gr.Row():
            cost = gr.Dataframe(label="Cost per job ($)", interactive=False)
            errors = gr.Dataframe(label="Top errors", interactive=False)
        alerts = gr.Dataframe(label="Quality alerts (latest window moved > 5%)", interactive=False)

    def load() -> tuple[Any, ...]:
        with user_errors("performance report"):
            v = performance_views(ctx)
        stages = list(dict.fromkeys(v["stage_pct"]["stage"])) if len(v["stage_pct"]) else None
        return (v["summary"], gr.BarPlot(value=v["stage_pct"], sort=stages), v["stage_pct"], v["rtf"],
                v["failures"], v["throughput"], v["throughput"], v["cost"], v["errors"], v["alerts"])

    outputs = [summary, stage_plot, stage_pct, rtf, failures, throughput_plot, throughput, cost,
               errors, alerts]
    for trigger in (refresh.click, tab.select):
        trigger(load, outputs=outputs, concurrency_id=READ_GROUP, concurrency_limit=None,
                api_visibility="private")
    return tab


def build_system_tab(ctx: AppContext) -> gr.Tab:
    with gr.Tab("System", elem_id="system-tab") as tab:
        refresh = gr.Button("Refresh")
        facts = gr.Markdown()
        weights = gr.Dataframe(pd.DataFrame(columns=WEIGHT_COLUMNS), wrap=True, interactive=False,
                               label="Weights: which are available and how to get the missing ones")
        gr.Markdown("Without Wav2Lip weights the **baseline** generator (weights-free, labelled as "
                    "such everywhere) stands in; without SyncNet weights LSE-D / LSE-C are reported "
                    "as n/a and the weights-free sync proxy is shown instead. **LatentSync** runs only "
                    "when chosen by name and needs its three files (UNet, whisper tiny, VAE) in "
                    "`$LIPSYNC_LATENTSYNC_DIR`; on the CPU a job that would outlast its time limit is "
                    "refused before it starts. Health checks: "
                    "`/healthz`, `/readyz`, `/metrics`.")

    def load() -> tuple[str, pd.DataFrame]:
        with user_errors("system facts"):
            return system_markdown(ctx), weights_table()

    for trigger in (refresh.click, tab.select):
        trigger(load, outputs=[facts, weights], concurrency_id=READ_GROUP, concurrency_limit=None,
                api_visibility="private")
    return tab
