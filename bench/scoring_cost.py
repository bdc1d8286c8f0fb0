"""Scoring cost against generation time (issue 4's bar: scoring <= 25% of generating).

    .venv/bin/python bench/scoring_cost.py [--runs 3] [--video monalisa_720p.mp4]

Alternates, in one process: a job with the ``baseline`` generator on CPU
(``pipeline.run.run``, the clip's own audio) and ``eval.score_videos`` of its output
against the clip and that audio, reusing the job's face track, its kept original frames and
its decoded speech as the app does (``run(keep=sample_frames)``, ``score_videos(originals=,
speech=)``, jobs.lifecycle.score_result; no SyncNet weights here,
so LSE is skipped with its reason). Prints medians of wall seconds and of CPU seconds
(``os.times()``: this process and its finished children, i.e. the ffmpeg processes; on a
shared, loaded machine CPU seconds compare more fairly than wall), both ratios and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import media_dir, median, peak_rss_mb

from eval.score import sample_frames, score_videos
from pipeline.options import RunOptions
from pipeline.run import run

BAR = 0.25  # scoring / generation


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds incl. children) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def _fmt(values: list[float]) -> str:
    return str([round(x, 3) for x in values])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--video", default="monalisa_720p.mp4")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    video = media_dir() / args.video
    gen: list[tuple[float, float]] = []
    sco: list[tuple[float, float]] = []
    parts: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.mp4"
        result = None

        def generate() -> None:
            nonlocal result
            result = run(video, video, out, options=RunOptions(model="baseline", device="cpu"),
                         keep=sample_frames)  # as jobs.lifecycle runs a scored job

        def score() -> None:
            scores = score_videos(video, out, audio=video, track=result.track, originals=result.originals,
                                  speech=result.speech)
            parts.append(scores.facts["seconds"])

        generate()  # warm-up: loads the face tracker once per process, as a server would
        score()
        for _ in range(args.runs):
            gen.append(timed(generate))
            sco.append(timed(score))
    gw, gc = [x[0] for x in gen], [x[1] for x in gen]
    sw, sc = [x[0] for x in sco], [x[1] for x in sco]
    print(f"clip: {args.video}, {result.frames} frames at {result.fps:.2f} fps, {result.width}x{result.height}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cpus")
    print(f"generation (baseline, cpu): wall median {median(gw):.3f} s {_fmt(gw)}; "
          f"cpu median {median(gc):.3f} s {_fmt(gc)}")
    print(f"scoring (score_videos):     wall median {median(sw):.3f} s {_fmt(sw)}; "
          f"cpu median {median(sc):.3f} s {_fmt(sc)}")
    print(f"scoring parts (last run):   {parts[-1]}")
    for what, s, g in (("wall", median(sw), median(gw)), ("cpu", median(sc), median(gc))):
        print(f"ratio scoring/generation ({what}): {s / g:.3f}  (bar <= {BAR})  {'PASS' if s / g <= BAR else 'FAIL'}")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
