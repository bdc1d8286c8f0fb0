"""Pipeline wall time against a bare ffmpeg transcode of the same clip (issue 2's bar).

    .venv/bin/python bench/overhead_vs_ffmpeg.py [--runs 5] [--video monalisa_720p.mp4]

Alternates, in one process: a bare ``ffmpeg`` transcode (libx264 -preset veryfast -crf 18,
AAC, +faststart: the encoder settings the pipeline uses), the same work split in two ffmpeg
processes joined by one pipe with no Python between them (``split``: the pipeline's decoder
and encoder commands; what the two-process design costs by itself), and the pipeline with
the ``passthrough`` and ``baseline`` generators, after one untimed round of each (the first
baseline run loads dlib's models, as a server does once). The pipeline decodes its frames in
process (pipeline/media/libav.py); ``passthrough_pipe`` is the passthrough with
``LIPSYNC_DECODER=pipe`` (frames decoded by an ffmpeg process and piped in), for the
difference. Prints medians, the ratios and peak RSS.
Bars: passthrough <= 1.2x, baseline <= 2.0x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path
from unittest.mock import patch

from common import alternate, media_dir, median, peak_rss_mb

from pipeline.media.encode import FrameWriter
from pipeline.media.ffmpeg import base_cmd, input_args, run_ffmpeg
from pipeline.media.libav import DECODER_ENV
from pipeline.options import RunOptions
from pipeline.media.probe import probe
from pipeline.run import run
from pipeline.media.decode import decoder_input


def bare_transcode(video: Path, out: Path) -> None:
    run_ffmpeg([*input_args(video), "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart",
                "-y", str(out)], what="bare transcode")


def split_transcode(video: Path, out: Path) -> None:
    """The pipeline's decoder piped straight into its encoder (the frames never enter Python)."""
    info = probe(video)
    frames = FrameWriter(out, *info.video.display_size, info.video.fps, audio_path=video,
                         pix_fmt="yuv420p")
    with frames:
        decoder = subprocess.Popen([*base_cmd(), "-loglevel", "error", *decoder_input(video), "-map", "0:v:0",
                                    "-an", "-pix_fmt", "yuv420p", "-f", "rawvideo", "pipe:1"],
                                   stdout=frames.pipe)
        frames.pipe.close()  # only the decoder holds the pipe now; close() waits for the encoder
        if decoder.wait() != 0:
            raise SystemExit("split transcode: the decoder failed")


def pipeline_run(video: Path, out: Path, model: str, *, decoder: str = "auto") -> None:
    """One job through ``pipeline.run`` with the given decoder setting (LIPSYNC_DECODER)."""
    with patch.dict(os.environ, {DECODER_ENV: decoder}):  # restored afterwards
        run(video, video, out, options=RunOptions(model=model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--video", default="monalisa_720p.mp4")
    args = ap.parse_args()
    video = media_dir() / args.video
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        times = alternate(
            args.runs, warmup=1,
            ffmpeg=lambda: bare_transcode(video, out / "bare.mp4"),
            split=lambda: split_transcode(video, out / "split.mp4"),
            passthrough=lambda: pipeline_run(video, out / "pass.mp4", "passthrough"),
            passthrough_pipe=lambda: pipeline_run(video, out / "pass_pipe.mp4", "passthrough", decoder="pipe"),
            baseline=lambda: pipeline_run(video, out / "base.mp4", "baseline"),
        )
    ref = median(times["ffmpeg"])
    print(f"clip: {video.name}, {args.runs} alternating runs each")
    for name, values in times.items():
        print(f"  {name:16s} median {median(values):6.2f} s  runs {' '.join(f'{v:.2f}' for v in values)}"
              f"  ratio {median(values) / ref:5.2f}x")
    print(f"bars: passthrough <= 1.20x -> {median(times['passthrough']) / ref:.2f}x; "
          f"baseline <= 2.00x -> {median(times['baseline']) / ref:.2f}x")
    print(f"peak RSS: this process {peak_rss_mb():.0f} MiB, ffmpeg children {peak_rss_mb(children=True):.0f} MiB")


if __name__ == "__main__":
    main()
