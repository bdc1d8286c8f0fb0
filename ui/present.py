"""Turning job records, scores and timings into the tables and text the tabs show."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import gradio as gr
import pandas as pd

from eval.sync_proxy import proxy_caution

# metric -> (what it is, which way is better); conventions come with each score.
METRICS = {
    "lse_d": ("LSE-D: SyncNet audio-video distance at the best offset", "lower is better"),
    "lse_c": ("LSE-C: SyncNet confidence (median - min distance)", "higher is better"),
    "av_offset": ("AV offset: SyncNet's best shift, in video frames", "0 = in sync"),
    "psnr_full": ("PSNR full frame vs the original, dB", "higher = closer to the original"),
    "ssim_full": ("SSIM full frame vs the original (Wang 2004)", "higher = closer to the original"),
    "psnr_face": ("PSNR lower-face crop vs the original, dB", "higher = closer to the original"),
    "ssim_face": ("SSIM lower-face crop vs the original", "higher = closer to the original"),
    "sync_proxy_corr": ("Sync proxy (weights-free, not LSE): held-out correlation of mouth and "
                        "speech measures at the best lag", "higher is better"),
    "sync_proxy_offset": ("Sync proxy best lag, in video frames (n/a below the confidence threshold)",
                          "0 = in sync"),
    "sync_proxy_conf": ("Sync proxy confidence (permutation z of the peak, like LSE-C; the offset is "
                        "shown at or above the calibrated threshold)", "higher = more distinct"),
}
SCORE_COLUMNS = ["metric", "value", "better", "meaning"]
TIMING_COLUMNS = ["stage", "seconds", "start_s"]
HISTORY_COLUMNS = ["id", "created_at", "status", "source", "model", "inputs", "run_s",
                   "output_duration_s", "error_type", "error_message"]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def na_text(reason: str | None, *, limit: int = 160) -> str:
    """``n/a (reason)`` for a score that could not be computed, short enough for a table
    cell (the full reason is in :func:`conventions`)."""
    reason = (reason or "not computed").strip()
    if reason.lower().startswith("n/a"):
        reason = reason.split("): ", 1)[0] + (")" if "): " in reason else "")
        return reason[:limit]
    return f"n/a ({reason[:limit]})"


def scores_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per score: value (or "n/a (reason)"), meaning, direction and convention."""
    out = []
    for r in rows:
        metric = r.get("metric", "")
        meaning, better = METRICS.get(metric, (metric, ""))
        value = r.get("value")
        shown = na_text(r.get("reason")) if value is None else _fmt(float(value), 4)
        caution = (r.get("convention") or {}).get("caution")
        if caution:
            meaning = f"{meaning}. CAUTION: {caution}"
        out.append({"metric": metric, "value": shown, "better": better, "meaning": meaning})
    return pd.DataFrame(out, columns=SCORE_COLUMNS)


def conventions(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """metric -> its convention (the pinned arguments it was computed with), and the full
    reason where the score is n/a."""
    out: dict[str, Any] = {}
    for r in rows:
        entry = dict(r.get("convention") or {})
        if r.get("value") is None:
            entry["reason"] = r.get("reason")
        out[r.get("metric", "")] = entry
    return out


def timing_plot(table: pd.DataFrame) -> Any:
    """A bar plot update of a timings table, bars in pipeline order (not alphabetical)."""
    return gr.BarPlot(value=table, sort=list(table["stage"]))


def timings_table(seconds: Mapping[str, float], offsets: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Stages in the order they started: seconds spent and start offset from the job start."""
    offsets = offsets or {}
    rows = [{"stage": s, "seconds": round(float(v), 4), "start_s": round(float(offsets.get(s, 0.0)), 4)}
            for s, v in seconds.items()]
    rows.sort(key=lambda r: (r["start_s"], r["stage"]))
    return pd.DataFrame(rows, columns=TIMING_COLUMNS)


def stages_table(stages: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A stored job's ``stages`` list (stage, start_offset_s, seconds) as a timings table."""
    stages = list(stages)
    return timings_table({s["stage"]: s["seconds"] or 0.0 for s in stages},
                         {s["stage"]: s["start_offset_s"] or 0.0 for s in stages})


def outcome_markdown(*, job_id: str, model_used: str, model_reason: str, frames: int,
                     frames_without_face: int, total_s: float) -> str:
    weights_free = " (weights-free stand-in, not a neural lip-sync)" if model_used == "baseline" else ""
    caution = proxy_caution(model_used)
    lines = [f"**Job** `{job_id}`",
             f"**Model used:** {model_used}{weights_free} ({model_reason})",
             *([f"**Sync proxy caution:** {caution}"] if caution else []),
             f"**Frames:** {frames}, of which {frames_without_face} had no face and were left untouched",
             f"**Time:** {total_s:.2f} s"]
    return "  \n".join(lines)


def history_table(jobs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """JobStore.list rows as the History table (newest first, as given)."""
    rows = []
    for j in jobs:
        rows.append({
            "id": j["id"], "created_at": (j.get("created_at") or "")[:19].replace("T", " "),
            "status": j.get("status"), "source": j.get("source"),
            "model": j.get("model_used") or j.get("model_requested"),
            "inputs": " | ".join(i.get("name", "") for i in j.get("inputs") or []),
            "run_s": _fmt(j.get("run_s"), 2), "output_duration_s": _fmt(j.get("output_duration_s"), 2),
            "error_type": j.get("error_type") or "", "error_message": j.get("error_message") or "",
        })
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def job_markdown(job: Mapping[str, Any]) -> str:
    """A stored job as text: status, model, inputs, timing totals and any error."""
    lines = [f"### Job `{job['id']}`",
             f"**Status:** {job.get('status')} · **source:** {job.get('source')}"
             + (f" · **user:** {job['user']}" if job.get("user") else ""),
             f"**Created:** {job.get('created_at')} · **started:** {job.get('started_at') or '-'}"
             f" · **finished:** {job.get('finished_at') or '-'}",
             f"**Model:** requested {job.get('model_requested') or '-'}, used "
             f"{job.get('model_used') or '-'}" + (f" ({job['model_reason']})" if job.get("model_reason") else ""),
             f"**Queue wait:** {_fmt(job.get('queue_wait_s'), 2) or '-'} s · **run:** "
             f"{_fmt(job.get('run_s'), 2) or '-'} s · **output:** {_fmt(job.get('output_duration_s'), 2) or '-'} s"]
    for i in job.get("inputs") or []:
        lines.append(f"**Input {i.get('role')}:** {i.get('name')} ({i.get('size_bytes') or '?'} bytes)")
    if job.get("error_type"):
        lines.append(f"**Error:** {job['error_type']}: {job.get('error_message') or ''}")
    if job.get("files_gone"):
        lines.append("**Files:** deleted by the retention policy")
    return "  \n".join(lines)


def _score_values(job: Mapping[str, Any]) -> dict[str, float | None]:
    return {s["metric"]: s.get("value") for s in job.get("scores") or []}


def _stage_seconds(job: Mapping[str, Any]) -> dict[str, float | None]:
    return {s["stage"]: s.get("seconds") for s in job.get("stages") or []}


def _diff_rows(key: str, a: Mapping[str, float | None], b: Mapping[str, float | None],
               order: Iterable[str]) -> pd.DataFrame:
    rows = []
    for name in order:
        va, vb = a.get(name), b.get(name)
        diff = vb - va if va is not None and vb is not None else None
        rows.append({key: name, "A": _fmt(va, 4) or "n/a", "B": _fmt(vb, 4) or "n/a",
                     "B - A": _fmt(diff, 4) or "n/a"})
    return pd.DataFrame(rows, columns=[key, "A", "B", "B - A"])


def compare_tables(job_a: Mapping[str, Any], job_b: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, timings) of two jobs side by side with B - A."""
    sa, sb = _score_values(job_a), _score_values(job_b)
    metrics = [m for m in METRICS if m in sa or m in sb] + sorted((set(sa) | set(sb)) - set(METRICS))
    ta, tb = _stage_seconds(job_a), _stage_seconds(job_b)
    stage_order = [s["stage"] for s in job_a.get("stages") or []]
    stage_order += [s["stage"] for s in job_b.get("stages") or [] if s["stage"] not in stage_order]
    timings = _diff_rows("stage", ta, tb, stage_order)
    total = _diff_rows("stage", {"total run": job_a.get("run_s")}, {"total run": job_b.get("run_s")},
                       ["total run"])
    return _diff_rows("metric", sa, sb, metrics), pd.concat([timings, total], ignore_index=True)


def frame_for_display(frame: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """A report frame with its index as columns and floats rounded (for gr.Dataframe)."""
    out = frame.reset_index() if frame.index.name or any(frame.index.names) else frame.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(digits)
        elif pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = out[col].astype(str)
    return out
