"""Reports over the job history, as pandas DataFrames.

Load once with :func:`history_frame` (one row per job) and, from it, :func:`stages_frame`
and :func:`scores_frame`; every other function is pure over those frames, so it can be
tested on hand-made frames and reused by the app.

Conventions:
- Percentiles use linear interpolation between the two nearest ranks (numpy's default
  ``method="linear"``, pandas ``quantile`` default): p95 of 1..5 is 4.8.
- Failure rate = (failed + interrupted) / (succeeded + failed + interrupted); a cancelled
  job is the user's choice, so it counts in neither part.
- Real-time factor = processing seconds (started -> finished) / output video seconds, over
  succeeded jobs; below 1 is faster than real time.
- Cost = billable GPU-seconds (the generator stage, see ``JobStore.finish``) / 3600 x the
  hourly rate from ``$LIPSYNC_GPU_HOUR_USD`` (default 2.50); the target is < $0.50 a video.
- Score trends split each model's scored jobs, oldest to newest, into windows of ``window``
  jobs aligned to the newest (so the latest window is always full; the oldest may be
  short). A window is flagged when its mean moves more than ``threshold`` (5%) against the
  previous window's mean; ``worse`` says whether the move is a regression.
- Trends of a sync proxy score (``sync_proxy_*``, weights-free, not LSE) also carry the
  window's mean proxy confidence (``conf_mean``) and ``caution``: the model drives the mouth
  from the speech energy the proxy reads (pipeline.options.SPEECH_ENERGY_MODELS), so its
  proxy is high by construction and must not rank it above another model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlite_utils import Database

from pipeline.options import SPEECH_ENERGY_MODELS
from storage.jobs import JobStore

GPU_HOUR_USD_ENV = "LIPSYNC_GPU_HOUR_USD"
DEFAULT_GPU_HOUR_USD = 2.50  # $/hour of one rented GPU
COST_TARGET_USD = 0.50  # the seed's target cost per generated video
QUALITY_METRIC = "lse_d"  # eval's metric name for LSE-D
PROXY_PREFIX, PROXY_CONF = "sync_proxy_", "sync_proxy_conf"  # eval's sync proxy scores
QUALITY_THRESHOLD = 0.05  # 5%: relative move of a window's mean that raises the alert
LOWER_IS_BETTER = frozenset({"lse_d"})  # every other metric: higher is better
TIME_COLUMNS = ("created_at", "started_at", "finished_at", "interrupted_at")
HISTORY_COLUMNS = (
    "id", "created_at", "started_at", "finished_at", "interrupted_at", "status", "source", "user",
    "kind", "model", "model_requested", "model_used", "model_reason", "inputs", "queue_wait_s",
    "run_s", "output_duration_s", "gpu_seconds", "output_path", "error_type", "error_message",
    "files_gone")


def gpu_hour_usd_from_env() -> float:
    """The $/GPU-hour from ``$LIPSYNC_GPU_HOUR_USD`` (default 2.50)."""
    raw = os.environ.get(GPU_HOUR_USD_ENV, "").strip()
    if not raw:
        return DEFAULT_GPU_HOUR_USD
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{GPU_HOUR_USD_ENV}={raw!r} is not a price: give dollars per hour, e.g. 2.5")
    return value


Source = JobStore | Database | str | os.PathLike[str] | None


@contextlib.contextmanager
def _store(source: Source) -> Iterator[JobStore]:
    """The given store, or one opened read-only-style (no recovery, no retention) and closed after."""
    if isinstance(source, JobStore):
        yield source
        return
    with JobStore(source, recover=False, retention=False) as store:
        yield store


def history_frame(source: Source = None, **filters: Any) -> pd.DataFrame:
    """One row per job, newest first, filtered like ``JobStore.list`` (status, model, since,
    until, text, source, user). Times are tz-aware UTC; ``model`` is the model used (the
    requested one while unknown); ``inputs`` joins the input names with " | "."""
    with _store(source) as store:
        rows = store.list(limit=None, **filters)
    for row in rows:
        row["model"] = row["model_used"] or row["model_requested"]
        row["inputs"] = " | ".join(i["name"] for i in row["inputs"])
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    for col in TIME_COLUMNS:
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
    for col in ("queue_wait_s", "run_s", "output_duration_s", "gpu_seconds"):
        frame[col] = pd.to_numeric(frame[col]).astype("float64")
    frame["files_gone"] = frame["files_gone"].astype(bool)
    return frame


def _child_frame(source: Source, history: pd.DataFrame, sql: str, columns: list[str]) -> pd.DataFrame:
    with _store(source) as store, store.connection() as db:
        rows = list(db.query(sql))
    frame = pd.DataFrame(rows, columns=columns)
    keep = history[["id", "model", "status", "created_at"]].rename(columns={"id": "job_id"})
    return frame.merge(keep, on="job_id", how="inner")


def stages_frame(source: Source, history: pd.DataFrame) -> pd.DataFrame:
    """Stage timings of the jobs in ``history``: job_id, stage, start_offset_s, seconds,
    with the job's model, status and created_at."""
    return _child_frame(source, history, "SELECT job_id, stage, start_offset_s, seconds FROM job_stages",
                        ["job_id", "stage", "start_offset_s", "seconds"])


def scores_frame(source: Source, history: pd.DataFrame) -> pd.DataFrame:
    """Scores of the jobs in ``history``: job_id, metric, value (NaN when missing), reason,
    with the job's model, status and created_at."""
    frame = _child_frame(source, history, "SELECT job_id, metric, value, reason FROM job_scores",
                         ["job_id", "metric", "value", "reason"])
    frame["value"] = pd.to_numeric(frame["value"]).astype("float64")
    return frame


def _quantiles(values: pd.Series) -> dict[str, float]:
    arr = values.dropna().to_numpy(dtype="float64")
    if arr.size == 0:
        return {"n": 0, "p50": np.nan, "p95": np.nan, "mean": np.nan}
    p50, p95 = np.percentile(arr, [50, 95], method="linear")
    return {"n": int(arr.size), "p50": float(p50), "p95": float(p95), "mean": float(arr.mean())}


def stage_percentiles(stages: pd.DataFrame, *, statuses: Iterable[str] = ("succeeded",)) -> pd.DataFrame:
    """p50/p95/mean seconds per (model, stage) over jobs with one of ``statuses``; stages
    in pipeline order (by their median start offset)."""
    sub = stages[stages["status"].isin(list(statuses))]
    rows = []
    for (model, stage), group in sub.groupby(["model", "stage"], sort=False):
        rows.append({"model": model, "stage": stage, "_order": group["start_offset_s"].median(),
                     **_quantiles(group["seconds"])})
    out = pd.DataFrame(rows, columns=["model", "stage", "_order", "n", "p50", "p95", "mean"])
    out = out.sort_values(["model", "_order", "stage"], kind="stable").drop(columns="_order")
    return out.set_index(["model", "stage"])


def _ended_at(history: pd.DataFrame) -> pd.Series:
    return history["finished_at"].fillna(history["interrupted_at"])


def throughput_per_hour(history: pd.DataFrame) -> pd.DataFrame:
    """Jobs that ended in each UTC hour (every hour from the first to the last, zeros
    included): total, succeeded, failed, interrupted, cancelled."""
    ended = history.assign(hour=_ended_at(history).dt.floor("h")).dropna(subset=["hour"])
    cols = ["succeeded", "failed", "interrupted", "cancelled"]
    if ended.empty:
        return pd.DataFrame(columns=["jobs", *cols], dtype="int64").rename_axis("hour")
    counts = pd.crosstab(ended["hour"], ended["status"]).reindex(columns=cols, fill_value=0)
    hours = pd.date_range(counts.index.min(), counts.index.max(), freq="h")
    counts = counts.reindex(hours, fill_value=0).astype("int64")
    counts.insert(0, "jobs", counts.sum(axis=1))
    counts.columns.name = None
    return counts.rename_axis("hour")


def failure_rates(history: pd.DataFrame) -> pd.DataFrame:
    """Per model and for all models ("(all)"): counted jobs, failed, interrupted,
    cancelled, failure_rate (NaN when no job counts)."""
    def row(frame: pd.DataFrame) -> dict[str, Any]:
        n = frame["status"].value_counts()
        bad = int(n.get("failed", 0) + n.get("interrupted", 0))
        counted = bad + int(n.get("succeeded", 0))
        return {"jobs": counted, "failed": int(n.get("failed", 0)), "interrupted": int(n.get("interrupted", 0)),
                "cancelled": int(n.get("cancelled", 0)), "failure_rate": bad / counted if counted else np.nan}

    named = history.assign(model=history["model"].fillna("(none)"))  # failed before a model was known
    rows = {model: row(group) for model, group in named.groupby("model", sort=True)}
    rows["(all)"] = row(history)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def top_errors(history: pd.DataFrame, *, n: int = 5) -> pd.DataFrame:
    """The ``n`` most frequent error types of failed/interrupted jobs: count, share of
    those jobs, and the newest message of that type. Ties break by error type."""
    bad = history[history["status"].isin(["failed", "interrupted"])]
    if bad.empty:
        return pd.DataFrame(columns=["error_type", "count", "share", "last_message"])
    bad = bad.assign(error_type=bad["error_type"].fillna("(unknown)"))
    newest = bad.sort_values("created_at").groupby("error_type")["error_message"].last()
    counts = bad["error_type"].value_counts()
    out = pd.DataFrame({"error_type": counts.index, "count": counts.to_numpy()})
    out = out.sort_values(["count", "error_type"], ascending=[False, True]).head(n)
    out["share"] = out["count"] / len(bad)
    out["last_message"] = out["error_type"].map(newest)
    return out.reset_index(drop=True)


def realtime_factor(history: pd.DataFrame) -> pd.DataFrame:
    """Per model: n, p50, p95, mean of processing seconds / output seconds (succeeded jobs
    with a known output duration)."""
    ok = history[(history["status"] == "succeeded") & (history["output_duration_s"] > 0)]
    rtf = ok["run_s"] / ok["output_duration_s"]
    rows = {model: _quantiles(rtf[group.index]) for model, group in ok.groupby("model", sort=True)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["n", "p50", "p95", "mean"]).rename_axis("model")


def cost_per_job(history: pd.DataFrame, *, gpu_hour_usd: float | None = None,
                 target_usd: float = COST_TARGET_USD) -> pd.DataFrame:
    """Per succeeded job: id, model, gpu_seconds, cost_usd and over_target (cost >= target)."""
    rate = gpu_hour_usd_from_env() if gpu_hour_usd is None else float(gpu_hour_usd)
    ok = history[history["status"] == "succeeded"]
    out = pd.DataFrame({"id": ok["id"], "model": ok["model"], "gpu_seconds": ok["gpu_seconds"].fillna(0.0)})
    out["cost_usd"] = out["gpu_seconds"] / 3600.0 * rate
    out["over_target"] = out["cost_usd"] >= target_usd
    return out.reset_index(drop=True)


def cost_summary(costs: pd.DataFrame) -> pd.DataFrame:
    """Per model, from :func:`cost_per_job`: n, mean/p95/max $ per job, jobs over target."""
    rows = {}
    for model, group in costs.groupby("model", sort=True):
        q = _quantiles(group["cost_usd"])
        rows[model] = {"n": q["n"], "mean_usd": q["mean"], "p95_usd": q["p95"],
                       "max_usd": float(group["cost_usd"].max()), "over_target": int(group["over_target"].sum())}
    return pd.DataFrame.from_dict(rows, orient="index",
                                  columns=["n", "mean_usd", "p95_usd", "max_usd", "over_target"]).rename_axis("model")


def score_trends(scores: pd.DataFrame, *, metric: str = QUALITY_METRIC, window: int = 20,
                 threshold: float = QUALITY_THRESHOLD, alert_on: str = "both") -> pd.DataFrame:
    """Per model and window of ``window`` scored jobs (newest-aligned): first/last job
    time, n, mean, change against the previous window (relative), ``worse`` (a regression)
    and ``alert`` (|change| > threshold; with ``alert_on="worse"`` only regressions)."""
    if window < 1:
        raise ValueError(f"window must be at least 1 job, got {window}")
    if alert_on not in ("both", "worse"):
        raise ValueError(f"alert_on must be 'both' or 'worse', got {alert_on!r}")
    proxy = metric.startswith(PROXY_PREFIX)
    cols = ["model", "window", "first", "last", "n", "mean", "change", "worse", "alert"]
    cols += ["conf_mean", "caution"] if proxy else []
    conf = scores[scores["metric"] == PROXY_CONF].set_index("job_id")["value"]
    sub = scores[(scores["metric"] == metric) & scores["value"].notna()]
    rows = []
    for model, group in sub.groupby("model", sort=True):
        group = group.sort_values(["created_at", "job_id"], kind="stable").reset_index(drop=True)
        from_end = (len(group) - 1 - np.arange(len(group))) // window
        group["window"] = from_end.max() - from_end
        prev = np.nan
        for w, part in group.groupby("window", sort=True):
            mean = float(part["value"].mean())
            change = mean / prev - 1.0 if not np.isnan(prev) and prev != 0 else np.nan
            worse = bool(change > 0) if metric in LOWER_IS_BETTER else bool(change < 0)
            alert = bool(abs(change) > threshold) and (alert_on == "both" or worse)
            rows.append({"model": model, "window": int(w), "first": part["created_at"].min(),
                         "last": part["created_at"].max(), "n": len(part), "mean": mean,
                         "change": change, "worse": worse, "alert": alert,
                         "conf_mean": float(part["job_id"].map(conf).mean()) if proxy else None,
                         "caution": model in SPEECH_ENERGY_MODELS if proxy else None})
            prev = mean
    return pd.DataFrame(rows, columns=cols)


def quality_alerts(trends: pd.DataFrame) -> pd.DataFrame:
    """The latest window of each model, where it is flagged."""
    if trends.empty:
        return trends
    latest = trends[trends["window"] == trends.groupby("model")["window"].transform("max")]
    return latest[latest["alert"]].reset_index(drop=True)


@dataclass(frozen=True)
class Report:
    """Every view of ``python -m storage report`` for one filtered history, as frames."""

    history: pd.DataFrame
    stage_percentiles: pd.DataFrame
    throughput: pd.DataFrame
    failure_rates: pd.DataFrame
    top_errors: pd.DataFrame
    realtime_factor: pd.DataFrame
    costs: pd.DataFrame
    cost_summary: pd.DataFrame
    trends: pd.DataFrame
    alerts: pd.DataFrame
    gpu_hour_usd: float
    metric: str
    window: int


def build_report(source: Source = None, *, metric: str = QUALITY_METRIC, window: int = 20,
                 gpu_hour_usd: float | None = None, **filters: Any) -> Report:
    """Load the history once (filtered like ``JobStore.list``) and compute every report."""
    rate = gpu_hour_usd_from_env() if gpu_hour_usd is None else float(gpu_hour_usd)
    with _store(source) as store:
        history = history_frame(store, **filters)
        stages = stages_frame(store, history)
        scores = scores_frame(store, history)
    costs = cost_per_job(history, gpu_hour_usd=rate)
    trends = score_trends(scores, metric=metric, window=window)
    return Report(history=history, stage_percentiles=stage_percentiles(stages),
                  throughput=throughput_per_hour(history), failure_rates=failure_rates(history),
                  top_errors=top_errors(history), realtime_factor=realtime_factor(history),
                  costs=costs, cost_summary=cost_summary(costs), trends=trends,
                  alerts=quality_alerts(trends), gpu_hour_usd=rate, metric=metric, window=window)
