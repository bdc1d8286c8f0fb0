"""PSNR and SSIM as scoring computes them against the direct library calls they replace.

    .venv/bin/python bench/quality_metrics.py [--runs 7]

On a real frame pair (monalisa_720p.mp4's frames 100 and 101: neighbours, so SSIM is far
from 1 in places) and the lower-face crop the face metrics use, one thread, alternating:
``eval.quality.ssim`` (OpenCV float64 filters) against ``skimage.metrics.structural_similarity``
with the pinned arguments, and ``eval.quality.psnr`` (``cv2.norm``'s exact sum) against the
float64 numpy formula; and ``eval.quality.ssim`` (its map in bands of rows) against the same
map computed over whole planes at once (``whole planes``: one band as large as the image).
Prints medians of CPU seconds per call, the ratios, the largest difference in value (SSIM) or
whether the values are bit-for-bit equal (PSNR), and peak RSS.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import cv2
import numpy as np
from common import media_dir, median, peak_rss_mb
from skimage.metrics import structural_similarity

from eval import quality
from pipeline.media.decode import read_frames


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))
    return 10.0 * math.log10(255.0 ** 2 / mse)


def whole_planes_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """``eval.quality.ssim`` as it was before the bands: one band as large as the image."""
    bands = quality.SSIM_BAND_PIXELS
    quality.SSIM_BAND_PIXELS = a.shape[0] * a.shape[1]
    try:
        return quality.ssim(a, b)
    finally:
        quality.SSIM_BAND_PIXELS = bands


def cpu(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.process_time()
        fn()
        return time.process_time() - start
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    frames = [f for i, f in zip(range(102), read_frames(media_dir() / "monalisa_720p.mp4")) if i >= 100]
    a, b = frames
    face = (slice(380, 560), slice(470, 810))  # the lower half of the face box, as the face metrics crop it
    pairs = {"720p frame": (a, b), "face crop": (a[face], b[face])}
    for name, (x, y) in pairs.items():
        cpus: dict[str, list[float]] = {"ssim ours": [], "ssim skimage": [], "ssim whole planes": [],
                                        "psnr ours": [], "psnr numpy": []}
        fns = {"ssim ours": cpu(lambda: quality.ssim(x, y)),
               "ssim whole planes": cpu(lambda: whole_planes_ssim(x, y)),
               "ssim skimage": cpu(lambda: structural_similarity(x, y, **quality.SSIM_ARGS)),
               "psnr ours": cpu(lambda: quality.psnr(x, y)),
               "psnr numpy": cpu(lambda: numpy_psnr(x, y))}
        for fn in fns.values():
            fn()  # warm-up: OpenCV's and numpy's first-call costs
        for _ in range(args.runs):
            for key, fn in fns.items():
                cpus[key].append(fn())
        ssim_diff = abs(quality.ssim(x, y) - structural_similarity(x, y, **quality.SSIM_ARGS))
        same_psnr = quality.psnr(x, y) == numpy_psnr(x, y)
        m = {k: median(v) for k, v in cpus.items()}
        print(f"{name} {x.shape}: SSIM ours {m['ssim ours'] * 1e3:.1f} ms vs skimage {m['ssim skimage'] * 1e3:.1f} ms "
              f"= {m['ssim ours'] / m['ssim skimage']:.2f}x (|difference| {ssim_diff:.1e}); "
              f"PSNR ours {m['psnr ours'] * 1e3:.2f} ms vs numpy {m['psnr numpy'] * 1e3:.2f} ms "
              f"= {m['psnr ours'] / m['psnr numpy']:.2f}x (bit-for-bit equal: {same_psnr})")
        print(f"  SSIM in bands {m['ssim ours'] * 1e3:.1f} ms vs whole planes {m['ssim whole planes'] * 1e3:.1f} ms "
              f"= {m['ssim ours'] / m['ssim whole planes']:.2f}x "
              f"(|difference| {abs(quality.ssim(x, y) - whole_planes_ssim(x, y)):.1e})")
    print(f"CPU seconds per call, medians of {args.runs} alternating runs, one thread; peak RSS {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
