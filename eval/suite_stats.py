"""A suite run's numbers: per-setting means with 95% bootstrap CIs, real-time factor and
failures, a ranking by the sync proxy that never puts the baseline on top by the proxy
alone, and the comparison with an earlier run of the same suite.

Input is one row per job (``storage.suites.run_jobs_frame``): ``setting``, ``model``,
``pair``, ``status``, ``run_s``, ``output_duration_s`` and one column per metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.options import SPEECH_ENERGY_MODELS

# the metrics a suite summarises, where the jobs have them (lower is better for lse_d only)
SUMMARY_METRICS = ("lse_d", "lse_c", "psnr_full", "ssim_full", "psnr_face", "ssim_face",
                   "sync_proxy_corr", "sync_proxy_conf")
LOWER_IS_BETTER = ("lse_d",)
PROXY_METRICS = ("sync_proxy_conf", "sync_proxy_corr")  # the proxy's confidence first, where scored
# The sync proxy cannot judge the models in pipeline.options.SPEECH_ENERGY_MODELS (as eval.sync_proxy's
# caution): the baseline opens the mouth with the same speech energy the proxy reads, so its proxy
# score is high by construction and never ranks it above another.
PROXY_NOTE = ("not ranked on the sync proxy: the baseline drives the mouth with the speech energy "
              "the proxy reads")
CI_LEVEL = 0.95
N_BOOT = 2000
BOOT_SEED = 0
LSE_D_ALERT = 0.05  # a setting whose mean LSE-D moves more than 5% is flagged (the quality alert)


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = N_BOOT, level: float = CI_LEVEL,
                 seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded: the same values give the same CI).
    One value gives (v, v); none gives (nan, nan)."""
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)  # (n_boot,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def metric_columns(jobs: pd.DataFrame) -> list[str]:
    return [m for m in SUMMARY_METRICS if m in jobs.columns and jobs[m].notna().any()]


def aggregate(jobs: pd.DataFrame, *, settings: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per setting (in ``settings`` order): jobs, succeeded, failed, mean real-time
    factor (run seconds / output seconds) and, per metric, mean, CI low/high and n over the
    succeeded jobs that have it."""
    order = list(settings) if settings is not None else list(dict.fromkeys(jobs["setting"]))
    metrics = metric_columns(jobs)
    rows = []
    for name in order:
        group = jobs[jobs["setting"] == name]
        ok = group[group["status"] == "succeeded"]
        rtf = (ok["run_s"] / ok["output_duration_s"]).where(ok["output_duration_s"] > 0)
        row = {"setting": name, "model": group["model"].iloc[0] if len(group) else None,
               "jobs": int(len(group)), "succeeded": int(len(ok)),
               "failed": int((group["status"] != "succeeded").sum()),
               "rtf_mean": float(rtf.mean()) if rtf.notna().any() else math.nan}
        for m in metrics:
            values = ok[m].dropna().to_numpy(np.float64)
            low, high = bootstrap_ci(values)
            row.update({f"{m}_mean": float(values.mean()) if values.size else math.nan,
                        f"{m}_ci_low": low, f"{m}_ci_high": high, f"{m}_n": int(values.size)})
        rows.append(row)
    return pd.DataFrame(rows)


def proxy_metric(summary: pd.DataFrame) -> str | None:
    """The proxy column a ranking uses: the confidence where scored, else the correlation."""
    for m in PROXY_METRICS:
        if f"{m}_mean" in summary.columns and summary[f"{m}_mean"].notna().any():
            return m
    return None


def proxy_ranking(summary: pd.DataFrame) -> pd.DataFrame:
    """Settings ranked by the sync proxy (higher first), the proxy-blind models (the
    baseline) left unranked with :data:`PROXY_NOTE`. Columns: setting, model, proxy
    metric, mean, rank (None when unranked), note."""
    metric = proxy_metric(summary)
    if metric is None:
        return pd.DataFrame(columns=["setting", "model", "metric", "mean", "rank", "note"])
    frame = pd.DataFrame({"setting": summary["setting"], "model": summary["model"], "metric": metric,
                          "mean": summary[f"{metric}_mean"]})
    blind = frame["model"].isin(SPEECH_ENERGY_MODELS)
    ranked = frame[~blind & frame["mean"].notna()].sort_values("mean", ascending=False, kind="stable")
    frame["rank"] = pd.Series(range(1, len(ranked) + 1), index=ranked.index, dtype="Int64")
    frame["note"] = np.where(blind, PROXY_NOTE, "")
    return frame.sort_values(["rank", "setting"], na_position="last", kind="stable").reset_index(drop=True)


def compare_runs(current: pd.DataFrame, previous: pd.DataFrame, *,
                 threshold: float = LSE_D_ALERT) -> pd.DataFrame:
    """Per setting of ``current``: mean LSE-D now and before with the relative change, failures
    now and before, and ``flag`` (text; empty when nothing moved): LSE-D moved more than
    ``threshold`` (5%) either way, or more failures than before. Both are ``aggregate``
    frames; a setting absent before is ``new``."""
    before = previous.set_index("setting") if len(previous) else pd.DataFrame()
    rows = []
    for _, now in current.iterrows():
        name = now["setting"]
        old = before.loc[name] if name in before.index else None
        lse_now = now.get("lse_d_mean", math.nan)
        lse_old = old.get("lse_d_mean", math.nan) if old is not None else math.nan
        change = (lse_now - lse_old) / lse_old if lse_old and np.isfinite(lse_old) and np.isfinite(lse_now) else math.nan
        flags = []
        if old is None:
            if len(before):
                flags.append("new")
        else:
            if np.isfinite(change) and abs(change) > threshold:
                flags.append(f"LSE-D {'up' if change > 0 else 'down'} {abs(change):.1%}")
            if int(now["failed"]) > int(old["failed"]):
                flags.append(f"failures {int(old['failed'])} -> {int(now['failed'])}")
        rows.append({"setting": name, "lse_d_mean": lse_now, "lse_d_before": lse_old,
                     "lse_d_change": change, "failed": int(now["failed"]),
                     "failed_before": int(old["failed"]) if old is not None else None,
                     "flag": "; ".join(flags)})
    return pd.DataFrame(rows)
