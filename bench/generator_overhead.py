"""The Wav2Lip pipeline against the generator's bare forward passes (issue 3's bar).

    .venv/bin/python bench/generator_overhead.py [--runs 1] [--video monalisa_720p.mp4]
        [--device cpu|cuda] [--encoder libx264|h264_nvenc] [--checkpoint FILE] [--batch-size N]

With a random-weights checkpoint in the published layout (or --checkpoint), loaded once
before timing, alternates in one process: the whole pipeline with ``passthrough`` and with
``wav2lip`` on the clip and its own audio; then times the bare forward passes
(``forward_batches``: input transfer, model, output transfer) over exactly the batches the
wav2lip run fed its model (same faces, same mel windows, same batch size).
Bar: wav2lip pipeline wall <= 1.25 x (bare forward + passthrough pipeline).
Prints medians, frames per second and peak RSS.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import alternate, media_dir, median, peak_rss_mb

from pipeline.media import audio as audio_mod
from pipeline.generators.wav2lip.model import Wav2Lip, save_checkpoint
from pipeline.options import RunOptions, RunResult
from pipeline.run import run
from pipeline.media.decode import frame_plan, read_frames
from pipeline.generators.wav2lip.generator import (Wav2LipGenerator, crop_box, forward_batches, make_wav2lip_generator,
                                        prepare_faces)

BAR = 1.25  # wav2lip wall / (bare forward + passthrough wall)


def model_batches(gen: Wav2LipGenerator, video: Path, audio: Path, result: RunResult,
                  batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (faces (b, 96, 96, 6) uint8, mels (b, 80, 16)) inputs the run's model saw, batch by batch."""
    wav = audio_mod.load_audio(audio)
    mels = audio_mod.mel_chunks(audio_mod.melspectrogram(wav), result.fps, result.frames)  # (n, 80, 16)
    plan = frame_plan(len(result.track.faces), result.frames, mode=RunOptions().loop)
    prepared: dict[int, np.ndarray] = {}  # source frame -> (96, 96, 6) model input
    for i, frame in enumerate(read_frames(video, fps=result.fps)):
        if i > plan.max():
            break
        face = result.track.faces[i]
        box = None if face is None else crop_box(face.box, gen.pads, frame.shape[1], frame.shape[0])
        if box is not None:
            x1, y1, x2, y2 = box
            prepared[i] = prepare_faces([frame[y1:y2, x1:x2]])[0]
    batches = []
    for start in range(0, result.frames, batch_size):
        outs = [o for o in range(start, min(start + batch_size, result.frames)) if plan[o] in prepared]
        if outs:
            batches.append((np.stack([prepared[plan[o]] for o in outs]), mels[outs]))  # (b, 96, 96, 6)
    return batches


def load_generator(tmp: Path, checkpoint: str | None, *, device: str,
                   batch_size: int | None) -> tuple[Wav2LipGenerator, Path, float]:
    """(generator, checkpoint path, load seconds): ``checkpoint``, or random weights saved
    in the published layout under ``tmp``."""
    path = Path(checkpoint) if checkpoint else tmp / "wav2lip_random.pth"
    if not checkpoint:
        save_checkpoint(Wav2Lip(), path)
    start = time.perf_counter()
    gen = make_wav2lip_generator(checkpoint=path, device=device, batch_size=batch_size)
    return gen, path, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--video", default="monalisa_720p.mp4")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--encoder", default="libx264", choices=("libx264", "h264_nvenc"))
    ap.add_argument("--checkpoint", help="a Wav2Lip checkpoint (default: random weights, published layout)")
    ap.add_argument("--batch-size", type=int, help="frames per batch (default: the generator's)")
    args = ap.parse_args()
    video = media_dir() / args.video
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        gen, checkpoint, load_s = load_generator(out, args.checkpoint, device=args.device,
                                                 batch_size=args.batch_size)
        batch = args.batch_size or gen.default_batch_size
        common = dict(device=args.device, encoder=args.encoder, batch_size=batch)
        results: dict[str, RunResult] = {}

        def job(model: str) -> None:
            opts = RunOptions(model=model, checkpoint=str(checkpoint) if model == "wav2lip" else None, **common)
            results[model] = run(video, video, out / f"{model}.mp4", options=opts)

        times = alternate(args.runs, passthrough=lambda: job("passthrough"), wav2lip=lambda: job("wav2lip"))
        w2l = results["wav2lip"]
        batches = model_batches(gen, video, video, w2l, batch)

        def bare() -> None:
            for faces, mels in batches:
                forward_batches(gen.model, faces, mels, batch_size=batch, device=gen.device, dtype=gen.dtype)

        times["bare_forward"] = alternate(args.runs, bare=bare)["bare"]

    t_pass, t_w2l, t_fwd = (median(times[k]) for k in ("passthrough", "wav2lip", "bare_forward"))
    n_model = sum(len(f) for f, _ in batches)
    print(f"clip: {video.name} ({w2l.width}x{w2l.height}, {w2l.frames} frames at {w2l.fps:.3f} fps), "
          f"device {gen.device} {gen.dtype}, batch {batch}, encoder {args.encoder}, {args.runs} run(s) each")
    print(f"model load (once, not in the times below): {load_s:.2f} s")
    for name, values in times.items():
        print(f"  {name:13s} median {median(values):7.2f} s  runs {' '.join(f'{v:.2f}' for v in values)}")
    print("  wav2lip stages: " + ", ".join(f"{k} {v:.2f}" for k, v in w2l.timings.items()))
    print(f"fps: pipeline {w2l.frames / t_w2l:.1f}, bare forward {n_model / t_fwd:.1f} "
          f"({n_model} faces in {len(batches)} batches)")
    ratio = t_w2l / (t_fwd + t_pass)
    print(f"bar: wav2lip <= {BAR:.2f} x (bare forward + passthrough) = {BAR * (t_fwd + t_pass):.2f} s "
          f"-> {ratio:.2f}x {'PASS' if ratio <= BAR else 'FAIL'}")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB (this process: model, frames, batches; ffmpeg children not included)")


if __name__ == "__main__":
    main()
