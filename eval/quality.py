"""PSNR and SSIM between original frame i and generated frame i.

Conventions (DESIGN.md "Metric conventions"): BGR uint8 frames compared as they are (no
colour conversion); PSNR = 10 log10(255^2 / MSE) with the MSE in float64 over every pixel
and channel (identical frames give +inf); SSIM is scikit-image's
``structural_similarity`` with the pinned arguments of Wang et al. 2004 (:data:`SSIM_ARGS`),
averaged over the three channels. It is computed here with OpenCV's separable filters
(:func:`ssim`: the same 11-tap Gaussian, sigma 1.5, reflected borders as scipy's
``mode="reflect"``, in float64), which gives skimage's value to within 1e-12
(tests/test_eval_quality.py compares them) at about a fifth of its CPU time on a 720p frame
(computed in bands of rows that stay in the cache: bench/quality_metrics.py). Both are
computed on the full frame and on the lower-face crop the generator touches (:func:`lower_face_box`), per frame, then
averaged (arithmetic mean; PSNR is averaged in dB) over the sampled frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from eval.results import QUALITY_METRICS

SSIM_ARGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False,
             "data_range": 255, "channel_axis": -1}
SSIM_MIN_SIDE = 11  # px: skimage's gaussian window is 2 * int(3.5 * 1.5 + 0.5) + 1 = 11 wide
SSIM_PAD = SSIM_MIN_SIDE // 2  # 5: skimage averages the map without this many rows and columns at each edge
SSIM_BAND_PIXELS = 64 * 1280  # the SSIM map is computed this many pixels (whole rows, at least 16) at a time
SSIM_SIGMA = SSIM_ARGS["sigma"]
SSIM_C1 = (0.01 * 255) ** 2  # skimage's K1 = 0.01, K2 = 0.03 with data_range 255
SSIM_C2 = (0.03 * 255) ** 2
_SSIM_KERNEL = cv2.getGaussianKernel(SSIM_MIN_SIDE, SSIM_SIGMA, cv2.CV_64F)  # normalised, as scipy's
SSIM_CONVENTION = ("skimage.metrics.structural_similarity(" + ", ".join(f"{k}={v!r}" for k, v in SSIM_ARGS.items())
                   + "), computed with OpenCV float64 filters (equal to skimage's within 1e-12)")
PEAK = 255.0  # uint8 data range
FACE_CROP = "lower half of the tracked face box: cols [x1, x2), rows [(y1 + y2) / 2, y2), clipped"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two equally shaped uint8 images; +inf when they are identical.

    For uint8 images of up to 4 channels the squared differences are summed by OpenCV
    (``cv2.norm(NORM_L2SQR)``, whose double result is off the integer sum by a few ulps, so
    rounding gives the exact sum for any frame below ~10^15 / 65025 px), so the sum divided
    by n is bit for bit the float64 mean; many times faster on a 720p frame than numpy's, and
    it releases the GIL while it runs.
    """
    if a.shape != b.shape:
        raise ValueError(f"PSNR of differently shaped images {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("PSNR of empty images")
    if a.dtype == b.dtype == np.uint8 and a.ndim in (2, 3) and (a.ndim == 2 or a.shape[2] <= 4):
        mse = round(cv2.norm(a, b, cv2.NORM_L2SQR)) / a.size  # the exact integer sum / n
    else:
        mse = float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK * PEAK / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two equally shaped (H, W) or (H, W, C) images: skimage's
    ``structural_similarity`` with :data:`SSIM_ARGS` (per channel, then the channels' mean),
    its Gaussian-weighted means and (population) variances from OpenCV filters."""
    if a.shape != b.shape:
        raise ValueError(f"SSIM of differently shaped images {a.shape} and {b.shape}")
    if min(a.shape[:2]) < SSIM_MIN_SIDE or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] > 4):
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} px "
                         f"with up to 4 channels, got {a.shape}")
    if a.ndim == 2:
        return _ssim_mean(a, b)
    return float(np.mean([_ssim_mean(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def _ssim_mean(a: np.ndarray, b: np.ndarray) -> float:
    """skimage's mean SSIM of two (H, W) images, one band of rows (about SSIM_BAND_PIXELS)
    at a time.

    Each band is filtered with the SSIM_PAD rows around it (the image's own rows, or the
    reflected border at its top and bottom), so its map rows are the whole image's; the
    band's seven float64 planes stay in the cache: a 720p frame (64-row bands) takes about 0.6x
    the CPU of filtering whole planes, while a face crop is one band (bench/quality_metrics.py)."""
    h, w = a.shape
    rows = max(16, SSIM_BAND_PIXELS // w)
    total = 0.0
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        i0, i1 = max(0, r0 - SSIM_PAD), min(h, r1 + SSIM_PAD)
        band = _ssim_map(a[i0:i1], b[i0:i1])[r0 - i0:r1 - i0]  # (r1 - r0, w)
        lo, hi = max(r0, SSIM_PAD), min(r1, h - SSIM_PAD)  # the rows skimage averages
        if hi > lo:
            total += float(band[lo - r0:hi - r0, SSIM_PAD:w - SSIM_PAD].sum(dtype=np.float64))
    return total / ((h - 2 * SSIM_PAD) * (w - 2 * SSIM_PAD))


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The SSIM map of two (H, W) images, borders reflected (7 float64 planes)."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    ux, uy = _blur(x), _blur(y)
    xy = _blur(np.multiply(x, y))
    xx = _blur(np.square(x, out=x))  # x and y are not needed after this
    yy = _blur(np.square(y, out=y))
    uxy = np.multiply(ux, uy)
    ux2, uy2 = np.square(ux, out=ux), np.square(uy, out=uy)
    xx -= ux2
    xx += yy
    xx -= uy2
    xx += SSIM_C2  # vx + vy + C2
    ux2 += uy2
    ux2 += SSIM_C1  # ux^2 + uy^2 + C1
    xy -= uxy
    xy *= 2
    xy += SSIM_C2  # 2 vxy + C2
    uxy *= 2
    uxy += SSIM_C1  # 2 ux uy + C1
    uxy *= xy
    ux2 *= xx
    uxy /= ux2
    return uxy


def _blur(image: np.ndarray) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(sigma=1.5, truncate=3.5, mode="reflect") per channel."""
    return cv2.sepFilter2D(image, cv2.CV_64F, _SSIM_KERNEL, _SSIM_KERNEL, borderType=cv2.BORDER_REFLECT)


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
