"""Scoring cost against generation time (issue 4's bar: scoring <= 25% of generating).

    .venv/bin/python bench/scoring_cost.py [--runs 3] [--video monalisa_720p.mp4]

Alternates, in one process: a job with the ``baseline`` generator on CPU
(``pipeline.run.run``, the clip's own audio) and ``eval.score_videos`` of its output
against the clip, reusing the job's face track as the app does (no SyncNet weights here,
so LSE is skipped with its reason). Prints medians, the ratio and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import media_dir, median, peak_rss_mb, timed

from eval.score import score_videos
from pipeline.options import RunOptions
from pipeline.run import run

BAR = 0.25  # scoring / generation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--video", default="monalisa_720p.mp4")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    video = media_dir() / args.video
    gen_s: list[float] = []
    score_s: list[float] = []
    parts: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.mp4"
        result = None

        def generate() -> None:
            nonlocal result
            result = run(video, video, out, options=RunOptions(model="baseline", device="cpu"))

        def score() -> None:
            parts.append(score_videos(video, out, track=result.track).facts["seconds"])

        generate()  # warm-up: loads the face tracker once per process, as a server would
        score()
        for _ in range(args.runs):
            gen_s.append(timed(generate))
            score_s.append(timed(score))
    g, s = median(gen_s), median(score_s)
    print(f"clip: {args.video}, {result.frames} frames at {result.fps:.2f} fps, {result.width}x{result.height}")
    print(f"generation (baseline, cpu): median {g:.3f} s  runs {[round(x, 3) for x in gen_s]}")
    print(f"scoring (score_videos):     median {s:.3f} s  runs {[round(x, 3) for x in score_s]}")
    print(f"scoring parts (last run):   {parts[-1]}")
    print(f"ratio scoring/generation:   {s / g:.3f}  (bar <= {BAR})  {'PASS' if s / g <= BAR else 'FAIL'}")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
