"""CLI for the job history.

    python -m storage history [--status S] [--model M] [--since DATE] [--until DATE]
                              [--text T] [--limit N] [--csv FILE]
    python -m storage report  [same filters] [--window N] [--gpu-hour-usd X]
    python -m storage show ID
    python -m storage prune   [--max-age-days D] [--max-total-mb MB]
    python -m storage recover
    python -m storage check   (SQLite's integrity check: exit 1 when the file is damaged)

``--db PATH`` (before the command) picks the database; default ``$LIPSYNC_DATA_DIR/jobs.db``.
Exit status: 0 on success, 2 on a usage or storage error (the message goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from storage import reports
from storage.db import StorageError, default_db_path, integrity_check, retention_from_env
from storage.jobs import JobStore
from storage.records import STATUSES

INPUTS_WIDTH = 40  # characters of input names shown per row
MESSAGE_WIDTH = 60


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m storage", description="LipSync Lab job history")
    p.add_argument("--db", type=Path, default=None, help="database file (default: $LIPSYNC_DATA_DIR/jobs.db)")
    sub = p.add_subparsers(dest="command", required=True)

    def filters(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--status", action="append", choices=STATUSES, help="repeat for several")
        sp.add_argument("--model", help="model used (e.g. wav2lip, baseline)")
        sp.add_argument("--since", help="created on or after DATE (YYYY-MM-DD or ISO time, UTC)")
        sp.add_argument("--until", help="created before DATE (a bare date includes that day)")
        sp.add_argument("--text", help="substring of an input file name (case-insensitive)")
        sp.add_argument("--source", choices=("app", "cli", "api"))

    h = sub.add_parser("history", help="list jobs, newest first")
    filters(h)
    h.add_argument("--limit", type=int, default=50, help="rows to print (default 50; 0 for all)")
    h.add_argument("--csv", metavar="FILE", help="write every matching job, all columns, to FILE ('-': stdout)")
    r = sub.add_parser("report", help="stage percentiles, throughput, failures, speed, cost, quality")
    filters(r)
    r.add_argument("--window", type=int, default=20, help="jobs per score-trend window (default 20)")
    r.add_argument("--metric", default=reports.QUALITY_METRIC, help="score for the trend (default lse_d)")
    r.add_argument("--gpu-hour-usd", type=float, default=None, help="$/GPU-hour (default $LIPSYNC_GPU_HOUR_USD or 2.50)")
    s = sub.add_parser("show", help="one job as JSON, with stages, scores and device")
    s.add_argument("job_id")
    pr = sub.add_parser("prune", help="delete old job files (rows are kept)")
    pr.add_argument("--max-age-days", type=float, default=None, help="default $LIPSYNC_RETENTION_DAYS")
    pr.add_argument("--max-total-mb", type=float, default=None, help="default $LIPSYNC_RETENTION_MB")
    sub.add_parser("recover", help="mark jobs whose process died as interrupted")
    sub.add_parser("check", help="SQLite's integrity check of the database file")
    return p


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    out = {k: getattr(args, k) for k in ("status", "model", "since", "until", "text", "source")}
    return {k: v for k, v in out.items() if v is not None}


def _table(frame: pd.DataFrame, *, index: bool = True) -> str:
    if frame.empty:
        return "(no data)"
    return frame.to_string(index=index, float_format=lambda v: f"{v:.3f}", na_rep="-")


def _short(text: Any, width: int) -> str:
    text = "" if text is None or (isinstance(text, float) and pd.isna(text)) else str(text)
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _history(store: JobStore, args: argparse.Namespace) -> None:
    frame = reports.history_frame(store, **_filters(args))
    if args.csv:
        target = sys.stdout if args.csv == "-" else args.csv
        frame.to_csv(target, index=False)
        if args.csv != "-":
            print(f"wrote {len(frame)} jobs to {args.csv}")
        return
    shown = frame if args.limit == 0 else frame.head(args.limit)
    view = pd.DataFrame({
        "id": shown["id"],
        "created (UTC)": shown["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S"),
        "status": shown["status"], "source": shown["source"], "model": shown["model"],
        "inputs": shown["inputs"].map(lambda t: _short(t, INPUTS_WIDTH)),
        "run s": shown["run_s"], "rtf": shown["run_s"] / shown["output_duration_s"],
        "error": shown["error_type"].map(lambda t: _short(t, 24)),
    })
    print(_table(view, index=False))
    print(f"{len(shown)} of {len(frame)} matching jobs")


def _report(store: JobStore, args: argparse.Namespace) -> None:
    rep = reports.build_report(store, metric=args.metric, window=args.window,
                               gpu_hour_usd=args.gpu_hour_usd, **_filters(args))
    errors = rep.top_errors.assign(last_message=rep.top_errors["last_message"].map(
        lambda t: _short(t, MESSAGE_WIDTH)))
    hourly = rep.throughput
    sections = [
        (f"Jobs: {len(rep.history)}", None),
        ("Seconds per stage (succeeded jobs; p50/p95 linear)", rep.stage_percentiles),
        ("Throughput per hour (UTC, last 24 hours with data)", hourly[hourly["jobs"] > 0].tail(24)),
        ("Failure rate ((failed + interrupted) / (succeeded + failed + interrupted))", rep.failure_rates),
        ("Top error types", errors),
        ("Real-time factor (processing s / output s)", rep.realtime_factor),
        (f"Cost per job at ${rep.gpu_hour_usd:.2f}/GPU-hour (target < ${reports.COST_TARGET_USD:.2f})",
         rep.cost_summary),
        (f"{rep.metric} trend per {rep.window}-job window", rep.trends),
    ]
    for title, frame in sections:
        print(title)
        if frame is not None:
            print(_table(frame, index=frame.index.name is not None or isinstance(frame.index, pd.MultiIndex)))
        print()
    if "caution" in rep.trends and rep.trends["caution"].any():
        for model in sorted(set(rep.trends.loc[rep.trends["caution"].astype(bool), "model"])):
            print(f"PROXY CAUTION: {model} drives the mouth from the speech energy {rep.metric} reads "
                  "(weights-free proxy, not LSE): never rank it above another model on the proxy alone")
    for row in rep.alerts.itertuples():
        print(f"QUALITY ALERT: {row.model} mean {rep.metric} {row.mean:.3f} moved {row.change:+.1%} "
              f"against its previous window ({'worse' if row.worse else 'better'})")
    if rep.alerts.empty:
        print(f"No quality alert (threshold {reports.QUALITY_THRESHOLD:.0%}).")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = args.db if args.db is not None else default_db_path()
    if args.command in ("history", "report", "show", "check") and not path.exists():
        print(f"no job history at {path} yet", file=sys.stderr)
        return 0 if args.command != "show" else 2
    try:
        with JobStore(path, recover=False, retention=False) as store:
            if args.command == "history":
                _history(store, args)
            elif args.command == "report":
                _report(store, args)
            elif args.command == "show":
                print(json.dumps(store.get(args.job_id), indent=2, ensure_ascii=False, default=str))
            elif args.command == "prune":
                limits = retention_from_env()
                limits = {"max_age_days": args.max_age_days if args.max_age_days is not None else limits["max_age_days"],
                          "max_total_mb": args.max_total_mb if args.max_total_mb is not None else limits["max_total_mb"]}
                if limits["max_age_days"] is None and limits["max_total_mb"] is None:
                    print("nothing to do: give --max-age-days/--max-total-mb or set "
                          "LIPSYNC_RETENTION_DAYS/LIPSYNC_RETENTION_MB", file=sys.stderr)
                    return 2
                gone = store.apply_retention(**limits)
                print(f"deleted the files of {len(gone)} job(s)" + (": " + ", ".join(gone) if gone else ""))
            elif args.command == "check":
                with store.connection() as db:
                    problems = [r for r in integrity_check(db) if r != "ok"]
                print("\n".join(problems) if problems else f"{path}: ok")
                return 1 if problems else 0
            elif args.command == "recover":
                ids = store.recover()
                print(f"marked {len(ids)} job(s) interrupted" + (": " + ", ".join(ids) if ids else ""))
    except (StorageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
