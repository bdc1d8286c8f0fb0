"""CLI: ``python -m pipeline run VIDEO AUDIO -o OUT.mp4 ...`` and ``python -m pipeline weights``.

Errors print one line on stderr naming the problem and exit non-zero; no traceback
(``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pipeline.errors import LipSyncError
from pipeline.options import LOOP_MODES, MODELS, RunOptions

log = logging.getLogger("pipeline")

EXIT_USER_ERROR = 2  # bad input, missing weights, no face: something the user can fix
EXIT_INTERNAL = 1  # a bug: please report it


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="lip-sync VIDEO (or a still photo) to AUDIO")
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
    p.add_argument("--encoder", default="libx264", help="libx264 or h264_nvenc")
    p.add_argument("--tracker", choices=("auto", "insightface", "dlib"), default="auto")
    p.add_argument("--timeout", type=float, help="stop the job after this many seconds")
    p.add_argument("--no-record", action="store_true", help="do not record the job in the history database")
    p.add_argument("--score", action=argparse.BooleanOptionalAction, default=True,
                   help="score the result against the original (PSNR/SSIM, sync proxy, LSE)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.recording import run_recorded

    options = RunOptions(
        model=args.model, checkpoint=args.checkpoint, batch_size=args.batch_size,
        face_index=args.face_index, device=args.device, loop=args.loop, pads=tuple(args.pads),
        crf=args.crf, encoder=args.encoder, tracker=args.tracker, timeout_s=args.timeout,
    )

    def progress(stage: str, fraction: float) -> None:
        log.info("%3.0f%% %s", 100 * fraction, stage)

    done = run_recorded(args.video, args.audio, args.output, options=options, progress=progress,
                        source="cli", record=not args.no_record, score=args.score)
    result, job_id = done.result, done.job_id
    if args.json:
        print(json.dumps(done.to_dict(), indent=2, default=str))
    else:
        print(f"{result.output_path}: {result.frames} frames at {result.fps:.3f} fps, "
              f"model {result.model_used} ({result.model_reason}), {result.total_s:.2f} s"
              + (f", job {job_id}" if job_id else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="verbose logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    sub.add_parser("weights", help="where each model's weights were found, or why not "
                                   "(--json, --download)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "weights":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "weights":
            from pipeline.weights import main_weights

            return main_weights(rest)
        return _cmd_run(args)
    except LipSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - the CLI's promise: one line, no traceback
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
