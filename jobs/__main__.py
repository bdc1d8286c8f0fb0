"""CLI of a recorded job: ``python -m jobs run VIDEO AUDIO -o OUT.mp4 ...`` runs, scores and
records the job in the history (as the app does), and ``python -m jobs weights`` lists the
weights. Same options as ``python -m pipeline run``, plus ``--no-record`` and ``--no-score``.
``python -m jobs suite run SUITE.yaml`` runs a suite (see jobs/suite_cli.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobs.suite_cli import add_suite_command, cmd_suite
from pipeline.__main__ import (add_run_arguments, add_weights_command, cli_main, exit_now, log_progress,
                               options_from_args, print_result)
from pipeline.errors import LipSyncError
from storage.errors import StorageError


def _cmd_run(args: argparse.Namespace) -> int:
    from jobs.lifecycle import run_recorded

    done = run_recorded(args.video, args.audio, args.output, options=options_from_args(args),
                        progress=log_progress, source="cli", record=not args.no_record,
                        score=args.score)
    print_result(done.to_dict(), as_json=args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="lip-sync VIDEO (or a still photo) to AUDIO, scored and recorded")
    add_run_arguments(p)
    p.add_argument("--no-record", action="store_true", help="do not record the job in the history database")
    p.add_argument("--score", action=argparse.BooleanOptionalAction, default=True,
                   help="score the result against the original (PSNR/SSIM, sync proxy, LSE)")
    add_weights_command(sub)
    add_suite_command(sub)
    return cli_main(parser, {"run": _cmd_run, "suite": cmd_suite}, argv,
                    user_errors=(LipSyncError, StorageError, OSError))


if __name__ == "__main__":
    exit_now(main())
