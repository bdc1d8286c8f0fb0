"""Whole-process CLI jobs, start-up included, against their references (issue 18's bars).

    .venv/bin/python bench/cli_startup.py [--runs 3] [--video monalisa_720p.mp4] [--no-wav2lip]

1. ``python -m jobs run VIDEO VIDEO -o OUT --model passthrough|baseline --no-score --no-record``
   as whole processes (interpreter start, imports, the job, exit) against a bare ``ffmpeg``
   libx264 veryfast crf 18 transcode of the same clip, alternating, medians.
   Bars: passthrough <= 1.3x, baseline <= 2.0x.
2. The Wav2Lip CLI job (random weights in the published format, CPU, ``--no-score
   --no-record``) as a whole process against the bare forward passes over the same frames
   (the clip's own track and mel windows, the job's batch size) at torch's default threads,
   timed in a fresh process after its model load. Bar: <= 1.3x; the job's peak RSS < 1 GB.
   The job runs with glibc's allocator settings (``pipeline.device.configure_malloc``), which
   make the forward passes themselves about 20% faster (bench/malloc_forward.py); the row
   ``bare_tuned`` times the bare passes with the same settings, so the job's own overhead
   reads as its ratio to that row (printed; the bar is judged against torch's defaults).

Peak RSS of each child is its own ``ru_maxrss`` (``os.wait4``), ffmpeg's children not included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, alternate, media_dir, median, run_child

from pipeline.media.ffmpeg import base_cmd, input_args

BARS = {"passthrough": 1.3, "baseline": 2.0, "wav2lip": 1.3}
RSS_BAR_MIB = 1024
_PEAKS: dict[str, float] = {}

# The bare forward passes, in a fresh process at torch's default threads: the clip's faces
# (tracked once, untimed) and mel windows, batched as the job batches them.
BARE_FORWARD = r"""
import sys, time, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from pipeline.generators.wav2lip.generator import (crop_box, forward_batches, CPU_BATCH,
                                                   prepare_faces)
from pipeline.generators.wav2lip.model import load_wav2lip
from pipeline.faces.tracking import track_video
from pipeline.media import audio as audio_mod
from pipeline.media.decode import read_frames
from pipeline.media.probe import probe
from pipeline.options import RunOptions, DEFAULT_PADS
video, ckpt = sys.argv[2], sys.argv[3]
if sys.argv[4] == "tuned":
    from pipeline.device import configure_malloc
    configure_malloc()  # the job's allocator settings (pipeline.device)
info = probe(video)
fps = info.video.fps
wav = audio_mod.load_audio(video)
n = max(1, round(len(wav) / audio_mod.SAMPLE_RATE * fps))
mels = audio_mod.mel_chunks(audio_mod.melspectrogram(wav), fps, n)
track = track_video(video, info, options=RunOptions(model="wav2lip"), fps=fps, n_track=n, landmarks=False)
faces = []
for i, frame in enumerate(read_frames(video, fps=fps)):
    if i >= n:
        break
    f = track.at(i)
    box = None if f is None else crop_box(f.box, DEFAULT_PADS, frame.shape[1], frame.shape[0])
    if box is not None:
        x1, y1, x2, y2 = box
        faces.append((i, prepare_faces([frame[y1:y2, x1:x2]])[0]))
model = load_wav2lip(ckpt)
idx = [i for i, _ in faces]
face_in, mel_in = np.stack([f for _, f in faces]), mels[idx]
start = time.perf_counter()
forward_batches(model, face_in, mel_in, batch_size=CPU_BATCH, device=torch.device("cpu"), dtype=torch.float32)
print(f"{time.perf_counter() - start:.4f} {len(idx)} {torch.get_num_threads()}")
"""


def child(name: str, cmd: list[str]) -> str:
    """Run ``cmd`` to the end; record its peak RSS under ``name``; its stdout."""
    _, stdout, peak = run_child(cmd)
    _PEAKS[name] = max(_PEAKS.get(name, 0.0), peak)
    return stdout


def cli_job(video: Path, out: Path, model: str, *extra: str) -> None:
    child(model, [sys.executable, "-m", "jobs", "run", str(video), str(video), "-o", str(out), "--model", model,
                  "--no-score", "--no-record", *extra])


def bare_transcode(video: Path, out: Path) -> None:
    child("ffmpeg", [*base_cmd(), "-loglevel", "error", *input_args(video), "-c:v", "libx264", "-preset",
                     "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
                     "-movflags", "+faststart", str(out)])


def report(times: dict[str, list[float]], ref: str) -> None:
    base = median(times[ref])
    for name, values in times.items():
        bar = BARS.get(name)
        verdict = "" if bar is None else f"  bar <= {bar:.1f}x: {'PASS' if median(values) / base <= bar else 'FAIL'}"
        print(f"  {name:12s} median {median(values):7.2f} s  runs {' '.join(f'{v:.2f}' for v in values)}"
              f"  ratio {median(values) / base:5.2f}x  peak RSS {_PEAKS.get(name, 0):6.0f} MiB{verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--video", default="monalisa_720p.mp4")
    ap.add_argument("--no-wav2lip", action="store_true", help="only the passthrough and baseline rows")
    args = ap.parse_args()
    video = media_dir() / args.video
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        times = alternate(args.runs, ffmpeg=lambda: bare_transcode(video, out / "bare.mp4"),
                          passthrough=lambda: cli_job(video, out / "p.mp4", "passthrough"),
                          baseline=lambda: cli_job(video, out / "b.mp4", "baseline"))
        print(f"clip: {video.name}, whole processes, {args.runs} alternating runs each")
        report(times, "ffmpeg")
        if args.no_wav2lip:
            return
        ckpt = out / "wav2lip_random.pth"
        child("save", [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                       "from pipeline.generators.wav2lip.model import Wav2Lip, save_checkpoint; "
                       "save_checkpoint(Wav2Lip(), sys.argv[2])", str(ROOT), str(ckpt)])
        w2l: dict[str, list[float]] = {"bare_forward": [], "bare_tuned": [], "wav2lip": []}
        for _ in range(args.runs):
            for name, mode in (("bare_forward", "default"), ("bare_tuned", "tuned")):
                seconds, faces, threads = child(name, [sys.executable, "-c", BARE_FORWARD, str(ROOT),
                                                       str(video), str(ckpt), mode]).split()
                w2l[name].append(float(seconds))
            start = time.perf_counter()
            cli_job(video, out / "w.mp4", "wav2lip", "--checkpoint", str(ckpt), "--device", "cpu")
            w2l["wav2lip"].append(time.perf_counter() - start)
        print(f"Wav2Lip (random weights, CPU): the whole CLI job against its bare forward passes over "
              f"{faces} faces at torch's default {threads} thread(s)")
        report(w2l, "bare_forward")
        print(f"  wav2lip against bare_tuned (the same allocator settings): "
              f"{median(w2l['wav2lip']) / median(w2l['bare_tuned']):.2f}x")
        peak = _PEAKS["wav2lip"]
        print(f"  wav2lip job peak RSS {peak:.0f} MiB: bar < {RSS_BAR_MIB} MiB: {'PASS' if peak < RSS_BAR_MIB else 'FAIL'}")


if __name__ == "__main__":
    main()
