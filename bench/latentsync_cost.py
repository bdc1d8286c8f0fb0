"""What LatentSync costs: seconds per UNet call on a 16-frame chunk, seconds per output frame of a
whole job, peak RSS; at the small config on the CPU, and at full size (fp16) where CUDA is.

    .venv/bin/python bench/latentsync_cost.py [--steps 2] [--iters 2] [--reference DIR] [--full]

Random weights in the published layouts (the small reference UNet; at full size a UNet built on
the device and saved as ``latentsync_unet.pt``): speed and memory do not depend on the values.
The clip is 16 frames of ../shared/media/hdtf_aoc_512.mp4 with its own audio. ``--full`` (on a
GPU machine, also run by ``bench/gpu_check.py --latentsync``) measures the full-size job on a 10 s
and a 5 s clip at 25 fps: peak VRAM of each (flat in clip length when equal), end-to-end seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from common import ROOT, media_dir, peak_rss_mb

from pipeline.device import configure_cpu_threads
from pipeline.generators.latentsync import build_unet, config_from_dict, load_unet
from pipeline.media.ffmpeg import ffmpeg_exe
from pipeline.options import RunOptions
from pipeline.run import run
from pipeline.weights import LATENTSYNC_DIR_ENV

REFERENCE = ROOT.parent / "shared" / "reference" / "latentsync15"
CHUNK = 16  # frames per UNet call
LATENT = 32  # 256 x 256 faces -> 32 x 32 latents
SMALL_VAE = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8)
FULL_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)  # sd-vae-ft-mse


def chunk_seconds(unet: torch.nn.Module, *, iters: int, device: str, dtype: torch.dtype) -> float:
    """Median seconds of one guided UNet call (batch 2: [no audio, audio]) on a 16-frame chunk."""
    cfg = unet.config
    sample = torch.randn(2, cfg.in_channels, CHUNK, LATENT, LATENT, device=device, dtype=dtype)  # (2, 13, 16, 32, 32)
    tokens = torch.randn(2, CHUNK, 50, cfg.cross_attention_dim, device=device, dtype=dtype)  # (2, 16, 50, 384)
    times = []
    with torch.inference_mode():
        for _ in range(iters + (1 if device == "cuda" else 0)):  # on a GPU one untimed warm-up call
            start = time.perf_counter()
            unet(sample, torch.tensor(500, device=device), tokens)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    times = times[1:] if device == "cuda" else times
    return sorted(times)[len(times) // 2]


def write_vae(folder: Path, layout: dict) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=256,
                  **layout).save_pretrained(folder)


def weights_folder(root: Path, reference: Path, *, full: bool) -> Path:
    """A LatentSync folder: the small reference UNet (or a random full-size one), whisper, a VAE."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "whisper").mkdir(exist_ok=True)
    shutil.copy(reference / "whisper_tiny_random.pt", root / "whisper" / "tiny.pt")
    if full:
        unet = build_unet(config_from_dict(), device="cuda" if torch.cuda.is_available() else "cpu").half()
        torch.save({"state_dict": unet.state_dict(), "global_step": 0}, root / "latentsync_unet.pt")
        del unet
    else:
        shutil.copy(reference / "unet_small.pt", root / "latentsync_unet.pt")
        shutil.copy(reference / "unet_small_config.json", root / "unet_config.json")
    write_vae(root / "vae", FULL_VAE if full else SMALL_VAE)
    return root


def cut(src: Path, out: Path, *, seconds: float) -> Path:
    """The first ``seconds`` of ``src`` with its audio, the video re-encoded losslessly."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-t", f"{seconds}",
                    "-c:v", "libx264", "-qp", "0", "-c:a", "aac", str(out)], check=True)
    return out


@contextlib.contextmanager
def latentsync_dir(folder: Path) -> Iterator[None]:
    old = os.environ.get(LATENTSYNC_DIR_ENV)
    os.environ[LATENTSYNC_DIR_ENV] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(LATENTSYNC_DIR_ENV, None)
        else:
            os.environ[LATENTSYNC_DIR_ENV] = old


def small_cpu(reference: Path, *, steps: int, iters: int) -> None:
    threads = configure_cpu_threads()  # as a job sets them
    unet = load_unet(reference / "unet_small_config.json", reference / "unet_small.pt")
    per_call = chunk_seconds(unet, iters=iters, device="cpu", dtype=torch.float32)
    print(f"small UNet on the CPU (fp32, {threads} torch thread(s)): {per_call:.2f} s per guided call on a "
          f"16-frame chunk = {per_call / CHUNK:.3f} s per frame and step (median of {iters})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = cut(media_dir() / "hdtf_aoc_512.mp4", root / "clip.mp4", seconds=CHUNK / 25)
        with latentsync_dir(weights_folder(root / "weights", reference, full=False)):
            result = run(clip, clip, root / "out.mp4", options=RunOptions(model="latentsync", device="cpu",
                                                                           steps=steps, silence_keep=False))
    gen_s = result.timings.get("generate", 0.0)
    print(f"whole job, {result.frames} frames of 512x512 at {steps} steps: {result.total_s:.1f} s end to end "
          f"= {result.total_s / result.frames:.2f} s per output frame (generate stage {gen_s / result.frames:.2f} s "
          f"per frame); at 20 steps about {gen_s / result.frames / steps * 20:.1f} s per frame")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


def full_gpu(reference: Path, *, iters: int, seconds: tuple[float, ...] = (10.0, 5.0)) -> dict[str, float]:
    """Full-size fp16 on CUDA: one chunk call, then whole jobs of ``seconds`` (peak VRAM, wall)."""
    unet = build_unet(config_from_dict(), device="cuda").half().eval()
    per_call = chunk_seconds(unet, iters=iters, device="cuda", dtype=torch.float16)
    print(f"full UNet on CUDA (fp16): {per_call * 1000:.0f} ms per guided call on a 16-frame chunk")
    del unet
    torch.cuda.empty_cache()
    figures = {"chunk_call_s": per_call}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        speech = media_dir() / "speech_en_60s.wav"
        with latentsync_dir(weights_folder(root / "weights", reference, full=True)):
            warm = cut(media_dir() / "hdtf_aoc_512.mp4", root / "warm.mp4", seconds=1.0)
            run(warm, warm, root / "warm_out.mp4", options=RunOptions(model="latentsync", device="cuda"))
            for s in seconds:  # the 8 s clip is extended (ping-pong) to the speech's length
                clip = cut(media_dir() / "hdtf_aoc_512.mp4", root / f"clip{s:g}.mp4", seconds=min(s, 8.0))
                audio = _speech(speech, root, s)
                torch.cuda.reset_peak_memory_stats()
                result = run(clip, audio, root / f"out{s:g}.mp4", options=RunOptions(model="latentsync", device="cuda"))
                peak = torch.cuda.max_memory_allocated() / 2**30
                figures[f"peak_vram_gib_{s:g}s"], figures[f"end_to_end_s_{s:g}s"] = peak, result.total_s
                print(f"{s:g} s clip ({result.frames} frames, 20 steps, fp16): {result.total_s:.1f} s end to end, "
                      f"peak VRAM {peak:.2f} GiB (allocated)")
    print(json.dumps(figures))
    return figures


def _speech(src: Path, root: Path, seconds: float) -> Path:
    out = root / f"speech{seconds:g}.wav"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-t", f"{seconds}",
                    str(out)], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--steps", type=int, default=2, help="DDIM steps of the small whole job")
    ap.add_argument("--iters", type=int, default=2, help="timed UNet calls")
    ap.add_argument("--full", action="store_true", help="also the full-size fp16 figures (needs CUDA)")
    args = ap.parse_args()
    small_cpu(args.reference, steps=args.steps, iters=args.iters)
    if args.full or torch.cuda.is_available():
        if not torch.cuda.is_available():
            raise SystemExit("--full needs a CUDA device")
        full_gpu(args.reference, iters=args.iters)


if __name__ == "__main__":
    main()
