"""PSNR and SSIM between original frame i and generated frame i.

Conventions (DESIGN.md "Metric conventions"): BGR uint8 frames compared as they are (no
colour conversion); PSNR = 10 log10(255^2 / MSE) with the MSE in float64 over every pixel
and channel (identical frames give +inf); SSIM is scikit-image's
``structural_similarity`` with the pinned arguments of Wang et al. 2004 (:data:`SSIM_ARGS`),
averaged over the three channels by skimage itself; a frame of at least ``SSIM_SPLIT_PX``
pixels is computed as two halves of rows on two threads (skimage's map of each half, from
the rows its window reaches beyond it: every map value is the whole frame's; only the
rounding of the mean differs, by under 1e-13), which halves the wall time of the one
full-frame SSIM that ends a 720p scoring. Both are computed on the full frame and
on the lower-face crop the generator touches (:func:`lower_face_box`), per frame, then
averaged (arithmetic mean; PSNR is averaged in dB) over the sampled frames.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from eval.results import QUALITY_METRICS

SSIM_ARGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False,
             "data_range": 255, "channel_axis": -1}
SSIM_MIN_SIDE = 11  # px: skimage's gaussian window is 2 * int(3.5 * 1.5 + 0.5) + 1 = 11 wide
SSIM_PAD = SSIM_MIN_SIDE // 2  # 5: each map value depends on this many rows either side; skimage
# averages the map without this many rows and columns at each edge
SSIM_SPLIT_PX = 1 << 18  # images this large (a 512x512 frame) are computed as two halves on two threads
SSIM_CONVENTION = ("skimage.metrics.structural_similarity(" + ", ".join(f"{k}={v!r}" for k, v in SSIM_ARGS.items())
                   + f"); images of {SSIM_SPLIT_PX} px or more by two halves of rows (the same map values; "
                   "the mean's rounding differs by < 1e-13)")
PEAK = 255.0  # uint8 data range
PSNR_BAND_ROWS = 64  # rows summed at a time: 64 x 1280 x 3 bytes of differences at 720p
FACE_CROP = "lower half of the tracked face box: cols [x1, x2), rows [(y1 + y2) / 2, y2), clipped"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two equally shaped uint8 images; +inf when they are identical.

    For uint8 images the squared differences are summed exactly as 64-bit integers, over
    bands of ``PSNR_BAND_ROWS`` rows (small temporaries, no fresh pages to fault in); that
    exact sum divided by n is bit for bit the float64 mean (whose partial sums of integers
    below 2^53 are exact too), about 4x faster on a 720p frame.
    """
    if a.shape != b.shape:
        raise ValueError(f"PSNR of differently shaped images {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("PSNR of empty images")
    if a.dtype == b.dtype == np.uint8 and a.ndim in (2, 3) and (a.ndim == 2 or a.shape[2] <= 4):
        mse = sum(_squared_error(a[r:r + PSNR_BAND_ROWS], b[r:r + PSNR_BAND_ROWS])
                  for r in range(0, a.shape[0], PSNR_BAND_ROWS)) / a.size
    else:
        mse = float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK * PEAK / mse)


def _squared_error(a: np.ndarray, b: np.ndarray) -> int:
    """The exact sum of squared differences of two uint8 arrays."""
    d = cv2.absdiff(a, b).reshape(-1)  # |a - b|, flat
    return int(np.einsum("i,i->", d, d, dtype=np.int64))  # integer products and sums: exact


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two equally shaped (H, W, 3) uint8 images, skimage with :data:`SSIM_ARGS`
    (by halves on two threads from ``SSIM_SPLIT_PX`` pixels: see the module doc)."""
    if a.shape != b.shape:
        raise ValueError(f"SSIM of differently shaped images {a.shape} and {b.shape}")
    h, w = a.shape[:2]
    if a.ndim != 3 or h * w < SSIM_SPLIT_PX or min(h, w) <= 4 * SSIM_PAD:
        return float(structural_similarity(a, b, **SSIM_ARGS))
    mid = h // 2
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssim-half") as helper:
        top = helper.submit(_ssim_map_sums, a, b, SSIM_PAD, mid)
        sums = _ssim_map_sums(a, b, mid, h - SSIM_PAD) + top.result()  # (C,) float64
    return float(np.mean(sums / ((h - 2 * SSIM_PAD) * (w - 2 * SSIM_PAD))))


def _ssim_map_sums(a: np.ndarray, b: np.ndarray, y0: int, y1: int) -> np.ndarray:
    """Per channel, skimage's SSIM map summed over rows [y0, y1) and the columns skimage
    averages, from the rows SSIM_PAD beyond them on either side (clipped to the image):
    every value summed is the one the whole image's map has there."""
    h, w = a.shape[:2]
    lo, hi = max(0, y0 - SSIM_PAD), min(h, y1 + SSIM_PAD)
    _, smap = structural_similarity(a[lo:hi], b[lo:hi], full=True, **SSIM_ARGS)  # (hi - lo, W, C)
    return smap[y0 - lo:y1 - lo, SSIM_PAD:w - SSIM_PAD].sum(axis=(0, 1), dtype=np.float64)


def lower_face_box(box: tuple[float, float, float, float], width: int, height: int
                   ) -> tuple[int, int, int, int] | None:
    """The lower half of a face box as integer (x1, y1, x2, y2) inside a width x height
    frame, or None when the clipped crop is smaller than SSIM's window."""
    x1, y1, x2, y2 = box
    c0, c1 = max(0, int(round(x1))), min(width, int(round(x2)))
    r0, r1 = max(0, int(round((y1 + y2) / 2))), min(height, int(round(y2)))
    if c1 - c0 < SSIM_MIN_SIDE or r1 - r0 < SSIM_MIN_SIDE:
        return None
    return c0, r0, c1, r1


def sample_indices(n: int, k: int) -> list[int]:
    """Up to ``k`` evenly spaced frame indices in [0, n): the middle frame of each of k
    equal parts (so 2 of 100 frames are 25 and 75, not the fade-in and fade-out)."""
    if n <= 0 or k <= 0:
        return []
    if n <= k:
        return list(range(n))
    return sorted({min(n - 1, int((j + 0.5) * n / k)) for j in range(k)})


def sample_plan(n: int, counts: dict[str, int]) -> dict[str, frozenset[int]]:
    """Frames each metric is measured on: ``counts[metric]`` evenly spaced of ``n``."""
    return {metric: frozenset(sample_indices(n, k)) for metric, k in counts.items()}


@dataclass
class QualityAccumulator:
    """Per-frame PSNR/SSIM of each metric (``psnr_full``, ``ssim_full``, ``psnr_face``,
    ``ssim_face``) on its own sampled frames; :meth:`means` averages them. Frames may be
    added from several threads, in any order: the means do not depend on it."""

    frames: dict[str, frozenset[int]]  # metric -> frame indices it is measured on
    values: dict[str, dict[int, float]] = field(default_factory=lambda: {m: {} for m in QUALITY_METRICS})
    missing: set[int] = field(default_factory=set)  # face-sampled frames without a usable face box

    @property
    def face_missing(self) -> int:
        return len(self.missing)

    @property
    def wanted(self) -> frozenset[int]:
        """Every frame some metric is measured on."""
        return frozenset().union(*self.frames.values())

    def add(self, i: int, original: np.ndarray, generated: np.ndarray,
            box: tuple[float, float, float, float] | None) -> None:
        """Frame i's values. For frames of the face metrics only, the frames may be
        ``pipeline.media.yuv.YuvFrame``s: only the face crop is converted to BGR."""
        on = {m for m in QUALITY_METRICS if i in self.frames.get(m, ())}
        if "psnr_full" in on:
            self.values["psnr_full"][i] = psnr(original, generated)
        if "ssim_full" in on:
            self.values["ssim_full"][i] = ssim(original, generated)
        if not on & {"psnr_face", "ssim_face"}:
            return
        h, w = original.shape[:2]
        crop = None if box is None else lower_face_box(box, w, h)
        if crop is None:
            self.missing.add(i)
            return
        c0, r0, c1, r1 = crop
        a, b = original[r0:r1, c0:c1], generated[r0:r1, c0:c1]
        if "psnr_face" in on:
            self.values["psnr_face"][i] = psnr(a, b)
        if "ssim_face" in on:
            self.values["ssim_face"][i] = ssim(a, b)

    def means(self) -> dict[str, float | None]:
        """Mean of each metric's per-frame values in frame order (None where no frame was measured)."""
        return {m: (float(np.mean([v[i] for i in sorted(v)])) if v else None) for m, v in self.values.items()}
