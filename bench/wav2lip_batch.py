"""Wav2Lip's CPU batch size: forward time and peak memory per batch size, side by side.

    .venv/bin/python bench/wav2lip_batch.py [--runs 3] [--frames 426] [--sizes 4,8,16]

Each batch size runs in a fresh process (its own peak RSS, ``os.wait4``), alternating sizes
run by run: a randomly initialised Wav2Lip saved in the published checkpoint format and
loaded through the real loader, ``forward_batches`` over ``--frames`` random 96x96x6 uint8 face
inputs and mel windows (speed does not depend on the pixels) at torch's default threads,
timed after the model load. Prints medians of the forward seconds, each size's ratio to the
fastest, frames per second and peak RSS; ``CPU_BATCH`` (pipeline/generators/wav2lip) is
the size the job uses on CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import ROOT, median, run_child

CHILD = r"""
import sys, time, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from pipeline.device import configure_cpu_threads
from pipeline.generators.wav2lip.generator import forward_batches
from pipeline.generators.wav2lip.model import load_wav2lip
configure_cpu_threads()
model = load_wav2lip(sys.argv[2])
n, batch = int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
faces = rng.integers(0, 256, (n, 96, 96, 6), dtype=np.uint8)  # as prepare_faces gives them
mels = rng.standard_normal((n, 80, 16), dtype=np.float32)
forward_batches(model, faces[:batch], mels[:batch], batch_size=batch, device=torch.device("cpu"),
                dtype=torch.float32)  # warm-up: first-call allocations
start = time.perf_counter()
forward_batches(model, faces, mels, batch_size=batch, device=torch.device("cpu"), dtype=torch.float32)
print(f"{time.perf_counter() - start:.4f} {torch.get_num_threads()}")
"""


def child(ckpt: Path, frames: int, batch: int) -> tuple[float, int, float]:
    """(forward seconds, torch threads, peak RSS MiB) of one fresh process."""
    _, stdout, peak = run_child([sys.executable, "-c", CHILD, str(ROOT), str(ckpt), str(frames), str(batch)])
    seconds, threads = stdout.split()
    return float(seconds), int(threads), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=426)
    ap.add_argument("--sizes", default="4,8,16")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    from pipeline.generators.wav2lip.generator import CPU_BATCH
    from pipeline.generators.wav2lip.model import Wav2Lip, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "wav2lip_random.pth"
        save_checkpoint(Wav2Lip(), ckpt)
        seconds: dict[int, list[float]] = {b: [] for b in sizes}
        peaks: dict[int, float] = dict.fromkeys(sizes, 0.0)
        threads = 0
        for _ in range(args.runs):
            for b in sizes:
                s, threads, peak = child(ckpt, args.frames, b)
                seconds[b].append(s)
                peaks[b] = max(peaks[b], peak)
    best = min(median(v) for v in seconds.values())
    print(f"Wav2Lip forward over {args.frames} frames, random weights, CPU, {threads} torch thread(s), "
          f"{args.runs} alternating runs; CPU_BATCH = {CPU_BATCH}")
    for b in sizes:
        m = median(seconds[b])
        print(f"  batch {b:3d}: median {m:6.2f} s  runs {' '.join(f'{v:.2f}' for v in seconds[b])}  "
              f"{args.frames / m:5.1f} frames/s  {m / best:4.2f}x the fastest  peak RSS {peaks[b]:5.0f} MiB")


if __name__ == "__main__":
    main()
