"""CLI: ``python -m eval score ORIGINAL GENERATED [--audio AUDIO] [--json]``, and
``python -m eval calibrate-proxy [--media DIR] [--write]`` (``eval.calibrate``).

Prints every metric (or the reason it is n/a) and exits 0; a metric that cannot be
computed (no SyncNet weights, no face) is not a failure. Exits 2 when the inputs cannot
be scored at all (unreadable, or videos that cannot be aligned), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from eval import calibrate
from eval.results import Scores
from pipeline.__main__ import exit_now
from pipeline.errors import LipSyncError
from pipeline.options import LOOP_MODES


def _format(scores: Scores) -> str:
    lines = []
    last_reason = None
    for s in scores.scores:
        row = s.row()
        if row["value"] is not None:
            shown = f"{row['value']:.4f}"
        else:
            shown = "n/a (same reason as above)" if row["reason"] == last_reason else row["reason"]
            last_reason = row["reason"]
        lines.append(f"{s.metric:<18} {shown}")
    facts = scores.facts
    lines.append(f"{'frames':<18} {facts.get('compared_frames')} compared "
                 f"(original {facts.get('original_frames')}, generated {facts.get('generated_frames')}); "
                 f"{facts.get('alignment')}")
    lines.append("sync_proxy_* is a weights-free proxy (mouth measures vs speech measures), not LSE; "
                 "its offset is n/a below the calibrated confidence (docs/PROXY_CALIBRATION.md)")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description="lip-sync scores")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score GENERATED against ORIGINAL")
    p.add_argument("original", help="the original face video")
    p.add_argument("generated", help="the lip-synced video (may be the original itself)")
    p.add_argument("--audio", help="speech track (default: the generated video's audio)")
    p.add_argument("--syncnet", help="SyncNet syncnet_v2.model (default: $LIPSYNC_SYNCNET_CHECKPOINT, "
                                     "models folder, Hub cache, Hub)")
    p.add_argument("--device", default="auto", help="torch device for SyncNet (default auto: CUDA where available)")
    p.add_argument("--loop", choices=LOOP_MODES, default="pingpong",
                   help="how the job extended a video shorter than its audio (RunOptions.loop)")
    p.add_argument("--json", action="store_true", help="print scores, conventions and versions as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    calibrate.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) or args.command != "score"
                        else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "calibrate-proxy":
        return calibrate.run(args)

    from eval.score import score_videos

    try:
        scores = score_videos(args.original, args.generated, audio=args.audio,
                              syncnet_checkpoint=args.syncnet, device=args.device, loop=args.loop)
    except LipSyncError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(scores.to_dict(), indent=2) + "\n" if args.json else _format(scores))
    return 0


if __name__ == "__main__":
    exit_now(main())
