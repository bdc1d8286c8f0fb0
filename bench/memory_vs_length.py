"""Peak RSS of a long job against a short one: memory must not grow with length (issue 2).

    .venv/bin/python bench/memory_vs_length.py [--model baseline]

Runs ``python -m pipeline run`` in a fresh child process for each job (so each peak is its
own): hdtf_aoc_512.mp4 driven by its own 8 s audio, then by speech_en_60s.wav (the video is
extended ping-pong to 60 s). Prints both peaks (the child's own ``ru_maxrss``) and the ratio.
Bars: ratio <= 1.25 and the long job under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import ROOT, media_dir, run_child


def job(video: Path, audio: Path, out: Path, model: str) -> tuple[float, dict]:
    wall, stdout, _ = run_child([sys.executable, "-m", "pipeline", "run", str(video), str(audio),
                                 "-o", str(out), "--model", model, "--json"])
    return wall, json.loads(stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="baseline")
    args = ap.parse_args()
    media = media_dir()
    video = media / "hdtf_aoc_512.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        short_wall, short = job(video, video, Path(tmp) / "short.mp4", args.model)
        long_wall, long = job(video, media / "speech_en_60s.wav", Path(tmp) / "long.mp4", args.model)
    ratio = long["peak_rss_mb"] / short["peak_rss_mb"]
    print(f"model {args.model}; cwd {ROOT}")
    print(f"  8 s job : {short['frames']:5d} frames, {short_wall:6.2f} s wall, peak RSS {short['peak_rss_mb']:7.1f} MiB")
    print(f"  60 s job: {long['frames']:5d} frames, {long_wall:6.2f} s wall, peak RSS {long['peak_rss_mb']:7.1f} MiB")
    print(f"bars: ratio <= 1.25 -> {ratio:.3f}; long job < 1024 MiB -> {long['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
