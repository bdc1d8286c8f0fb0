"""CLI of the library: ``python -m pipeline run VIDEO AUDIO -o OUT.mp4 ...`` runs the run loop
alone (no history, no scores) and ``python -m pipeline weights`` lists the weights.

``python -m jobs run`` takes the same options and also records and scores the job. Errors
print one line on stderr naming the problem and exit non-zero; no traceback (``--debug``
shows it).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from pipeline.errors import LipSyncError
from pipeline.media.encode import encoder_from_env
from pipeline.options import (DEFAULT_GUIDANCE, DEFAULT_STEPS, ENCODERS, LOOP_MODES, MAX_GUIDANCE, MAX_STEPS, MODELS,
                              TRACKERS, RunOptions)

log = logging.getLogger("pipeline")

EXIT_USER_ERROR = 2  # bad input, missing weights, no face: something the user can fix
EXIT_INTERNAL = 1  # a bug: please report it


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The ``run`` command's inputs and RunOptions flags (shared with ``python -m jobs run``)."""
    p.add_argument("video", help="face video or still photo (jpg/png/webp)")
    p.add_argument("audio", help="speech track (any format ffmpeg reads)")
    p.add_argument("-o", "--output", required=True, help="output MP4 path")
    p.add_argument("--model", choices=MODELS, default="auto")
    p.add_argument("--checkpoint", help="Wav2Lip checkpoint (.pth); else LIPSYNC_WAV2LIP_CHECKPOINT, models/, the Hub")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--face-index", type=int, default=0, help="0 = largest face, 1 = next largest, ...")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--loop", choices=LOOP_MODES, default="pingpong",
                   help="how to extend the video when the audio is longer")
    p.add_argument("--pads", type=int, nargs=4, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   default=RunOptions().pads)
    p.add_argument("--crf", type=int, default=RunOptions().crf)
    p.add_argument("--encoder", choices=ENCODERS,
                   help="auto (h264_nvenc where it works here, else libx264; the default, or $LIPSYNC_ENCODER)")
    p.add_argument("--tracker", choices=TRACKERS, default="auto")
    p.add_argument("--timeout", type=float, help="stop the job after this many seconds")
    ls = p.add_argument_group("LatentSync (--model latentsync)")
    ls.add_argument("--steps", type=int, help=f"DDIM steps, 1 to {MAX_STEPS} (default {DEFAULT_STEPS})")
    ls.add_argument("--guidance", type=float, help=f"classifier-free guidance scale, 0 to {MAX_GUIDANCE:g}; <= 1: none (default {DEFAULT_GUIDANCE:g})")
    ls.add_argument("--seed", type=int, help="noise seed: the same inputs and seed give the same output (default 0)")
    ls.add_argument("--silence-keep", action=argparse.BooleanOptionalAction, default=True,
                    help="keep the source mouth where the speech gate hears silence (default on)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        model=args.model, checkpoint=args.checkpoint, batch_size=args.batch_size,
        face_index=args.face_index, device=args.device, loop=args.loop, pads=tuple(args.pads),
        crf=args.crf, encoder=args.encoder or encoder_from_env(), tracker=args.tracker, timeout_s=args.timeout,
        steps=args.steps, guidance=args.guidance, seed=args.seed, silence_keep=args.silence_keep,
    )


def log_progress(stage: str, fraction: float) -> None:
    log.info("%3.0f%% %s", 100 * fraction, stage)


def print_result(d: dict, *, as_json: bool) -> None:
    """One JSON object, or one line: output, frames, fps, model and why, seconds, job id."""
    if as_json:
        print(json.dumps(d, indent=2, default=str))
        return
    job = f", job {d['job_id']}" if d.get("job_id") else ""
    print(f"{d['output_path']}: {d['frames']} frames at {d['fps']:.3f} fps, model {d['model_used']} "
          f"({d['model_reason']}), {d['total_s']:.2f} s{job}")


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.run import run

    result = run(args.video, args.audio, args.output, options=options_from_args(args),
                 progress=log_progress)
    print_result(result.to_dict(), as_json=args.json)
    return 0


def cli_main(parser: argparse.ArgumentParser, commands: dict[str, Callable[[argparse.Namespace], int]],
             argv: Sequence[str] | None, *,
             user_errors: tuple[type[BaseException], ...] = (LipSyncError, OSError)) -> int:
    """Parse, set up logging, run ``commands[args.command]`` (``weights`` takes the rest of
    the line) and turn errors into one line and an exit code: ``user_errors`` (the domain's
    named errors, a missing file) exit 2, anything else is a bug and exits 1."""
    parser.add_argument("--debug", action="store_true", help="verbose logs and full tracebacks")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "weights":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "weights":
            from pipeline.weights_report import main_weights

            return main_weights(rest)
        return commands[args.command](args)
    except user_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - the CLI's promise: one line, no traceback
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
              file=sys.stderr)
        return EXIT_INTERNAL


def exit_now(code: int) -> NoReturn:
    """End a finished CLI process at once: non-daemon threads joined, ``atexit`` handlers run
    (logging flushed, temporary files removed), stdout and stderr flushed, then ``os._exit``.
    What it skips is the interpreter's teardown of every module and native object, 0.5 s
    after a Wav2Lip job (torch) and 0.05-0.07 s after a baseline or passthrough one."""
    try:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def add_weights_command(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("weights", help="where each model's weights were found, or why not "
                                   "(--json, --download)", add_help=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="lip-sync VIDEO (or a still photo) to AUDIO: the run loop alone"))
    add_weights_command(sub)
    return cli_main(parser, {"run": _cmd_run}, argv)


if __name__ == "__main__":
    exit_now(main())
