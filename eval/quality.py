"""PSNR and SSIM between original frame i and generated frame i.

Conventions (DESIGN.md "Metric conventions"): BGR uint8 frames compared as they are (no
colour conversion); PSNR = 10 log10(255^2 / MSE) with the MSE in float64 over every pixel
and channel (identical frames give +inf); SSIM is scikit-image's
``structural_similarity`` with the pinned arguments of Wang et al. 2004 (:data:`SSIM_ARGS`),
averaged over the three channels by skimage itself. Both are computed on the full frame and
on the lower-face crop the generator touches (:func:`lower_face_box`), per frame, then
averaged (arithmetic mean; PSNR is averaged in dB) over the sampled frames.

Both run over row bands of ``BAND_ROWS`` rows, so a whole 720p frame is never converted or
expanded to float64 at once (skimage's 7.4 MB float64 maps miss the cache and fault fresh
pages: 0.35-0.43 against 0.27-0.32 CPU s for one 720p SSIM). PSNR's exact integer sum is the same by
bands. SSIM is skimage's own map (``full=True``) of each band with ``SSIM_PAD`` more rows on
each side, which every map value of the band's rows depends on, so each value is the one
the whole-frame call computes; only the mean's summation order differs (within 1e-12,
tests/test_eval_quality.py). Frames may be ``pipeline.yuv.YuvFrame``s: a band converts only
its own rows to BGR.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from eval.scores import QUALITY_METRICS
from pipeline.yuv import YuvFrame

Image = np.ndarray | YuvFrame  # BGR uint8, or I420 that slices like BGR

SSIM_ARGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False,
             "data_range": 255, "channel_axis": -1}
SSIM_MIN_SIDE = 11  # px: skimage's gaussian window is 2 * int(3.5 * 1.5 + 0.5) + 1 = 11 wide
PEAK = 255.0  # uint8 data range
SSIM_PAD = (SSIM_MIN_SIDE - 1) // 2  # 5: skimage averages the map without this border, and a map
# value depends on the rows up to this far away
SSIM_THREADS = 2  # threads sharing the bands of one frame's SSIM (eval.score's pool also runs two frames)
BAND_ROWS = 64  # rows per band: 74 rows x 1280 px of float64 is 0.76 MB, in a core's L2 cache
SSIM_BANDS = (f"images taller than {2 * BAND_ROWS + 2 * SSIM_PAD} rows by bands of {BAND_ROWS} rows, each "
              f"computed with {SSIM_PAD} more rows each side (the same map; its mean within 1e-12 of one call)")
FACE_CROP = "lower half of the tracked face box: cols [x1, x2), rows [(y1 + y2) / 2, y2), clipped"


def psnr(a: Image, b: Image) -> float:
    """PSNR in dB of two equally shaped uint8 images (arrays or ``YuvFrame``s); +inf when they
    are identical.

    For uint8 images the squared differences are summed exactly as 64-bit integers, band by
    band; that exact sum divided by n is bit for bit the float64 mean (whose partial sums of
    integers below 2^53 are exact too), about 4x faster on a 720p frame.
    """
    if a.shape != b.shape:
        raise ValueError(f"PSNR of differently shaped images {a.shape} and {b.shape}")
    size = math.prod(a.shape)
    if size == 0:
        raise ValueError("PSNR of empty images")
    if a.dtype == b.dtype == np.uint8 and len(a.shape) in (2, 3) and (len(a.shape) == 2 or a.shape[2] <= 4):
        mse = sum(_squared_error(a[r:r + BAND_ROWS], b[r:r + BAND_ROWS])
                  for r in range(0, a.shape[0], BAND_ROWS)) / size
    else:
        mse = float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK * PEAK / mse)


def _squared_error(a: np.ndarray, b: np.ndarray) -> int:
    """The exact sum of squared differences of two uint8 arrays."""
    d = cv2.absdiff(a, b).reshape(-1)  # |a - b|, flat
    return int(np.einsum("i,i->", d, d, dtype=np.int64))  # integer products and sums: exact


def ssim(a: Image, b: Image) -> float:
    """SSIM of two equally shaped (H, W, 3) uint8 images (arrays or ``YuvFrame``s), skimage
    with :data:`SSIM_ARGS`; by bands of rows when taller than two bands (see the module doc)."""
    if a.shape != b.shape:
        raise ValueError(f"SSIM of differently shaped images {a.shape} and {b.shape}")
    h, w = a.shape[:2]
    if h <= 2 * BAND_ROWS + 2 * SSIM_PAD or w < SSIM_MIN_SIDE:
        return float(structural_similarity(a[:, :], b[:, :], **SSIM_ARGS))
    starts = range(SSIM_PAD, h - SSIM_PAD, BAND_ROWS)
    parts = _band_pool().map(lambda y0: _band_ssim_sums(a, b, y0), starts) if len(starts) > 4 else \
        map(lambda y0: _band_ssim_sums(a, b, y0), starts)
    sums = np.zeros(a.shape[2])  # per channel, summed in band order whatever thread computed a band
    for part in parts:
        sums += part
    return float(np.mean(sums / ((h - 2 * SSIM_PAD) * (w - 2 * SSIM_PAD))))


def _band_ssim_sums(a: Image, b: Image, y0: int) -> np.ndarray:
    """Per channel, skimage's SSIM map summed over rows [y0, y0 + BAND_ROWS) (clipped) and the
    columns it averages, computed on those rows with SSIM_PAD more on each side."""
    h, w = a.shape[:2]
    y1 = min(h - SSIM_PAD, y0 + BAND_ROWS)
    rows = slice(y0 - SSIM_PAD, y1 + SSIM_PAD)
    _, smap = structural_similarity(a[rows, :], b[rows, :], full=True, **SSIM_ARGS)  # (rows, W, 3)
    return smap[SSIM_PAD:SSIM_PAD + y1 - y0, SSIM_PAD:w - SSIM_PAD].sum(axis=(0, 1))


@functools.cache
def _band_pool() -> ThreadPoolExecutor:
    """Threads for the bands of a large frame's SSIM (scipy's filters release the GIL), so one
    full-frame SSIM does not hold a scoring's tail on one core."""
    return ThreadPoolExecutor(max_workers=SSIM_THREADS, thread_name_prefix="ssim-band")


os.register_at_fork(after_in_child=_band_pool.cache_clear)  # a forked child has none of the threads


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
        """Frame i's values. The frames may be ``pipeline.yuv.YuvFrame``s: the full-frame
        metrics convert them band by band, the face metrics only in the face crop."""
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
