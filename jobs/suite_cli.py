"""``python -m jobs suite run|example|results|runs``: suites from the command line.

``run SUITE`` runs a YAML/CSV suite file (or a folder of clips with ``--settings``) as one
batch in this process, models loaded once, every job recorded with the suite and run id;
progress goes to stderr, the summary table (or ``--json``) to stdout. It exits 0 when the run
finished, even with failed jobs (they are in the table with their reason), and 2 when the
suite was refused before any job ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd  # only for a type: importing it costs a CLI job 0.2 s

log = logging.getLogger(__name__)

SHOWN = ["setting", "jobs", "failed", "rtf_mean", "lse_d_mean", "lse_d_ci_low", "lse_d_ci_high",
         "psnr_full_mean", "ssim_full_mean", "sync_proxy_corr_mean", "sync_proxy_conf_mean"]


def add_suite_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suite", help="run a suite (pairs x settings) and show its results")
    ss = p.add_subparsers(dest="suite_command", required=True)
    r = ss.add_parser("run", help="run SUITE (.yaml, .csv or a folder of clips)")
    r.add_argument("suite", nargs="?", help="the suite file or folder")
    r.add_argument("--example", action="store_true", help="run the example suite shipped with the app")
    r.add_argument("--settings", help="comma-separated settings (needed for CSV and folders; "
                                      "replaces a YAML file's), e.g. 'baseline, passthrough'")
    r.add_argument("--name", help="the suite's name for CSV and folders (default: the file's stem)")
    r.add_argument("--executor", default="threads", help="threads (this process) or workers")
    r.add_argument("--no-grid", action="store_true", help="skip the per-clip grid videos")
    r.add_argument("--json", action="store_true", help="print the results as JSON")
    ss.add_parser("example", help="make the example suite and print its path")
    res = ss.add_parser("results", help="show the results of run RUN_ID")
    res.add_argument("run_id")
    res.add_argument("--json", action="store_true")
    ss.add_parser("runs", help="list suite runs, newest first")


def _store() -> object:
    from jobs.lifecycle import default_store

    return default_store()


def _print_results(results: object, *, as_json: bool) -> None:
    d = results.to_dict()  # type: ignore[attr-defined]
    if as_json:
        print(json.dumps(d, indent=2, default=str))
        return
    summary: pd.DataFrame = results.summary  # type: ignore[attr-defined]
    cols = [c for c in SHOWN if c in summary.columns]
    print(f"suite {d['suite']} run {d['run_id']} ({d['status']})")
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for row in d["jobs"]:
        if row["status"] != "succeeded":
            print(f"failed: {row['pair']} x {row['setting']}: {row['error_type']}: {row['error_message']}")
    for row in d["comparison"]:
        if row["flag"]:
            print(f"compared with run {d['previous_run_id']}: {row['setting']}: {row['flag']}")
    for row in d["proxy_ranking"]:
        if row["note"]:
            print(f"proxy: {row['setting']}: {row['note']}")
    for pair, path in d["grids"].items():
        print(f"grid {pair}: {path}")
    for name, path in d["files"].items():
        print(f"export {name}: {path}")


def _cmd_run(args: argparse.Namespace) -> int:
    from eval.suites import SuiteError, load_suite, settings_from_text
    from jobs.examples import ensure_example_suite
    from jobs.executors import make_executor
    from jobs.suites import run_suite
    from storage.db import data_dir

    store = _store()
    path = ensure_example_suite(data_dir()) if args.example else args.suite
    if not path:
        raise SuiteError("give a suite file or folder (or --example)", source="suite run")
    settings = settings_from_text(args.settings) if args.settings else None
    suite = load_suite(path, settings=settings, name=args.name)
    executor = make_executor(args.executor, work_dir=None)
    executor.start()

    def report(done: int, total: int, state: object) -> None:
        s = state  # jobs.suites.JobStatus
        extra = f": {s.error}" if getattr(s, "error", None) else ""
        sys.stderr.write(f"[{done}/{total}] {s.pair} x {s.setting}: {s.status}{extra}\n")

    try:
        results = run_suite(suite, store=store, executor=executor, source="cli", on_update=report,
                            grids=not args.no_grid)
    finally:
        executor.close()
    _print_results(results, as_json=args.json)
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    """The ``suite`` command's subcommands."""
    if args.suite_command == "run":
        return _cmd_run(args)
    if args.suite_command == "example":
        from jobs.examples import ensure_example_suite
        from storage.db import data_dir

        print(os.path.abspath(ensure_example_suite(data_dir())))
        return 0
    from jobs.suites import suite_results
    from storage.suites import list_runs

    if args.suite_command == "results":
        _print_results(suite_results(_store(), args.run_id), as_json=args.json)
        return 0
    for run in list_runs(_store()):
        print(f"{run['id']}  {run['suite']:<24} {run['status']:<12} {run['total_jobs']} jobs  {run['created_at']}")
    return 0
