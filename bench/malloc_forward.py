"""glibc's allocator settings (``pipeline.device.configure_malloc``) on a CPU forward loop.

    .venv/bin/python bench/malloc_forward.py [--runs 3] [--faces 200]

Runs the same forward loop in fresh child processes, alternating: with glibc's defaults
(``LIPSYNC_MALLOC_TRIM_MB=0``) and with the settings every job gets (a fixed 32 MB mmap
threshold, a 256 MB trim threshold): the Wav2Lip model with random weights in
the published format, loaded by the real loader, over random faces and mels in the CPU batch
size (``forward_batches``). Each child prints the loop's wall seconds, its system (kernel)
CPU seconds and its minor page faults (``getrusage``); this prints the medians, their
ratio and each child's peak RSS. Random weights: a speed and memory figure only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import ROOT, median, run_child

LOOP = r"""
import os, resource, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from pipeline.device import configure_malloc
from pipeline.generators.wav2lip.generator import CPU_BATCH, forward_batches
from pipeline.generators.wav2lip.model import load_wav2lip
configure_malloc()  # as run() does; LIPSYNC_MALLOC_TRIM_MB=0 leaves glibc's defaults
model = load_wav2lip(sys.argv[2])
n = int(sys.argv[3])
rng = np.random.default_rng(0)
faces = rng.integers(0, 255, (n, 96, 96, 6), dtype=np.uint8)
mels = rng.standard_normal((n, 80, 16)).astype(np.float32)
forward_batches(model, faces[:CPU_BATCH], mels[:CPU_BATCH], batch_size=CPU_BATCH)  # warm-up
r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
forward_batches(model, faces, mels, batch_size=CPU_BATCH)
wall, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
print(wall, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--faces", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "wav2lip_random.pth"
        run_child([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                   "from pipeline.generators.wav2lip.model import Wav2Lip, save_checkpoint; "
                   "save_checkpoint(Wav2Lip(), sys.argv[2])", str(ROOT), str(ckpt)])
        rows: dict[str, list[tuple[float, float, float, float]]] = {"glibc default": [], "configured": []}
        for _ in range(args.runs):
            for name, trim in (("glibc default", "0"), ("configured", "")):
                cmd = ["env", f"LIPSYNC_MALLOC_TRIM_MB={trim}", sys.executable, "-c", LOOP, str(ROOT), str(ckpt),
                       str(args.faces)]
                _, out, peak = run_child(cmd)
                wall, system, faults = (float(x) for x in out.split())
                rows[name].append((wall, system, faults, peak))
    print(f"Wav2Lip forward (random weights, CPU), {args.faces} faces, {args.runs} alternating fresh processes each")
    base = median([r[0] for r in rows["glibc default"]])
    for name, values in rows.items():
        walls = [r[0] for r in values]
        print(f"  {name:14s} wall median {median(walls):6.2f} s  runs {' '.join(f'{w:.2f}' for w in walls)}"
              f"  ratio {median(walls) / base:.2f}x  system CPU median {median([r[1] for r in values]):.2f} s"
              f"  page faults median {median([r[2] for r in values]):,.0f}"
              f"  peak RSS {max(r[3] for r in values):.0f} MiB")


if __name__ == "__main__":
    main()
