"""GPU figures of the Wav2Lip generator (issue 3) and of LatentSync (issue 16), for a machine with CUDA.

    .venv/bin/python bench/gpu_check.py [--video monalisa_720p.mp4] [--checkpoint FILE]
        [--batch 128] [--iters 20] [--encoders libx264,h264_nvenc] [--latentsync | --latentsync-only]

1. fp16 frames per second at batch 128: the model alone (CUDA-synchronised), and
   ``forward_batches`` (uint8 upload, /255 on the GPU, model, uint8 download).
2. End-to-end seconds of the whole pipeline on the clip with its own audio, once per
   encoder, after one untimed warm-up job (model load, cuDNN autotuning). Issue 3's bar on
   an H100: the 14.2 s monalisa clip end to end in under 4 s.

Uses a random-weights checkpoint in the published layout unless --checkpoint is given.

3. ``--latentsync``: LatentSync at full size in fp16 with random weights built on the device
   (:func:`latentsync_cost.full_gpu`): one guided 16-frame UNet call, then whole jobs of a 10 s
   and a 5 s clip at 25 fps: peak VRAM of each (issue 16's bar: <= 4.0 GB for 10 s, flat in clip
   length) and end-to-end seconds (the bar on an H100: a 10 s clip in < 30 s).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import media_dir, peak_rss_mb
from generator_overhead import load_generator

from pipeline.device import device_facts
from pipeline.options import RunOptions
from pipeline.run import run
from pipeline.generators.wav2lip.generator import Wav2LipGenerator, forward_batches, to_model_input


def model_fps(gen: Wav2LipGenerator, batch: int, iters: int) -> tuple[float, float]:
    """(model-only fps, forward_batches fps) at ``batch`` frames per call."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (batch, 96, 96, 6), dtype=np.uint8)  # (B, 96, 96, 6)
    mels = rng.uniform(-4, 4, (batch, 80, 16)).astype(np.float32)  # (B, 80, 16)
    with torch.inference_mode():
        mel_t, face_t = to_model_input(faces, mels, device=gen.device, dtype=gen.dtype)
        for _ in range(3):
            gen.model(mel_t, face_t)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            gen.model(mel_t, face_t)
        torch.cuda.synchronize()
        bare = batch * iters / (time.perf_counter() - start)
    forward_batches(gen.model, faces, mels, batch_size=batch, device=gen.device, dtype=gen.dtype)
    start = time.perf_counter()
    for _ in range(iters):
        forward_batches(gen.model, faces, mels, batch_size=batch, device=gen.device, dtype=gen.dtype)
    full = batch * iters / (time.perf_counter() - start)
    return bare, full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default="monalisa_720p.mp4")
    ap.add_argument("--checkpoint")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--encoders", default="libx264,h264_nvenc")
    ap.add_argument("--latentsync", action="store_true", help="also the LatentSync full-size fp16 check")
    ap.add_argument("--latentsync-only", action="store_true", help="only the LatentSync full-size fp16 check")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine")
    print(json.dumps(device_facts(gpu=True)))
    if args.latentsync or args.latentsync_only:
        from latentsync_cost import REFERENCE, full_gpu

        full_gpu(REFERENCE, iters=3)
        if args.latentsync_only:
            return
    video = media_dir() / args.video
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        gen, checkpoint, load_s = load_generator(out, args.checkpoint, device="cuda", batch_size=args.batch)
        print(f"model load: {load_s:.2f} s ({gen.dtype})")
        bare, full = model_fps(gen, args.batch, args.iters)
        print(f"fp16 batch {args.batch}: model {bare:.0f} frames/s, with transfers {full:.0f} frames/s")

        base = dict(model="wav2lip", checkpoint=str(checkpoint), device="cuda", batch_size=args.batch)
        run(video, video, out / "warm.mp4", options=RunOptions(**base))  # untimed warm-up
        for encoder in args.encoders.split(","):
            try:
                result = run(video, video, out / f"{encoder}.mp4", options=RunOptions(encoder=encoder, **base))
            except Exception as exc:  # noqa: BLE001 - report and go on to the next encoder
                print(f"{encoder}: failed: {type(exc).__name__}: {exc}")
                continue
            stages = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
            print(f"{encoder}: {result.total_s:.2f} s end to end for {result.duration_s:.1f} s of video "
                  f"({result.frames} frames, {result.frames / result.total_s:.0f} fps; {stages})")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB; GPU peak allocated "
          f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
