"""Frames kept in the decoder's own format (I420, yuv420p) with BGR views of regions.

A generator touches only the face, yet converting whole frames yuv420p -> BGR after decoding
and BGR -> yuv420p before encoding costs about as much CPU as the H.264 encode itself (720p).
So the run loop passes ``YuvFrame``s: raw I420 planes that read like a (H, W, 3) BGR array
when sliced (``frame[y1:y2, x1:x2]`` converts just that region) and take patches back with
``paste``, which converts just the patch's region back. Pixels outside every patch stay the
decoder's bytes, untouched by any colour conversion.

OpenCV's I420 conversions use the BT.601 limited-range matrix, as ffmpeg's default swscale
conversion to ``bgr24`` does, so a region looks the same through either path.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.generators.blend import Patch, paste as paste_bgr


def even_box(x1: int, y1: int, x2: int, y2: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) grown to even corners (I420's chroma is per 2x2 block), inside width x height."""
    x1, y1 = max(0, x1 - x1 % 2), max(0, y1 - y1 % 2)
    return x1, y1, min(width, x2 + x2 % 2), min(height, y2 + y2 % 2)


class YuvFrame:
    """One I420 frame: ``data`` is (H * 3 // 2, W) uint8, H and W even."""

    __slots__ = ("data", "height", "width")

    def __init__(self, data: np.ndarray) -> None:
        rows, width = data.shape
        height = rows * 2 // 3
        if data.dtype != np.uint8 or rows != height * 3 // 2 or height % 2 or width % 2:
            raise ValueError(f"not an I420 frame buffer with even sides: {data.shape} {data.dtype}")
        self.data = data
        self.height, self.width = height, width

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of Y (H, W), U (H/2, W/2), V (H/2, W/2)."""
        h, w = self.height, self.width
        flat = self.data.reshape(-1)  # (H * W * 3 / 2,)
        quarter = (h // 2) * (w // 2)
        y = flat[: h * w].reshape(h, w)
        u = flat[h * w: h * w + quarter].reshape(h // 2, w // 2)
        v = flat[h * w + quarter:].reshape(h // 2, w // 2)
        return y, u, v

    def _even_region(self, x1: int, y1: int, x2: int, y2: int) -> tuple[int, int, int, int]:
        return even_box(x1, y1, x2, y2, self.width, self.height)

    def region_bgr(self, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
        """BGR (y2 - y1, x2 - x1, 3) of a region whose corners are even and inside the frame."""
        y, u, v = self.planes()
        h, w = y2 - y1, x2 - x1
        buf = np.concatenate([y[y1:y2, x1:x2].reshape(-1), u[y1 // 2:y2 // 2, x1 // 2:x2 // 2].reshape(-1),
                              v[y1 // 2:y2 // 2, x1 // 2:x2 // 2].reshape(-1)]).reshape(h * 3 // 2, w)
        return cv2.cvtColor(buf, cv2.COLOR_YUV2BGR_I420)  # (h, w, 3)

    def set_region_bgr(self, x1: int, y1: int, bgr: np.ndarray) -> None:
        """Write a BGR block (even size, even corner) back into the planes."""
        h, w = bgr.shape[:2]
        i420 = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YUV_I420).reshape(-1)  # (h*w*3/2,)
        y, u, v = self.planes()
        q = (h // 2) * (w // 2)
        y[y1:y1 + h, x1:x1 + w] = i420[: h * w].reshape(h, w)
        u[y1 // 2:(y1 + h) // 2, x1 // 2:(x1 + w) // 2] = i420[h * w: h * w + q].reshape(h // 2, w // 2)
        v[y1 // 2:(y1 + h) // 2, x1 // 2:(x1 + w) // 2] = i420[h * w + q:].reshape(h // 2, w // 2)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """``frame[y1:y2, x1:x2]`` (optionally ``[..., c]``): that region as BGR."""
        if not isinstance(key, tuple):
            key = (key,)
        rows = key[0] if len(key) > 0 else slice(None)
        cols = key[1] if len(key) > 1 else slice(None)
        if not isinstance(rows, slice) or not isinstance(cols, slice) or rows.step not in (None, 1) \
                or cols.step not in (None, 1):
            raise TypeError("a YuvFrame is indexed by plain row and column slices only")
        ry1, ry2, _ = rows.indices(self.height)
        rx1, rx2, _ = cols.indices(self.width)
        if ry2 <= ry1 or rx2 <= rx1:
            return np.zeros((max(0, ry2 - ry1), max(0, rx2 - rx1), 3), np.uint8)[key[2:]]
        x1, y1, x2, y2 = self._even_region(rx1, ry1, rx2, ry2)
        bgr = self.region_bgr(x1, y1, x2, y2)[ry1 - y1:ry2 - y1, rx1 - x1:rx2 - x1]
        return bgr[(slice(None), slice(None), *key[2:])] if len(key) > 2 else bgr

    def to_bgr(self) -> np.ndarray:
        return cv2.cvtColor(self.data, cv2.COLOR_YUV2BGR_I420)  # (H, W, 3)

    def copy(self) -> YuvFrame:
        return YuvFrame(self.data.copy())


def paste(frame: YuvFrame | np.ndarray, patch: Patch) -> None:
    """Composite ``patch`` onto a YuvFrame (converting only its region) or a BGR array."""
    if not isinstance(frame, YuvFrame):
        paste_bgr(frame, patch)
        return
    px1, py1, px2, py2 = patch.box
    x1, y1, x2, y2 = frame._even_region(max(0, px1), max(0, py1), min(frame.width, px2),
                                        min(frame.height, py2))
    if x1 >= x2 or y1 >= y2:
        return
    region = frame.region_bgr(x1, y1, x2, y2)
    paste_bgr(region, Patch((px1 - x1, py1 - y1, px2 - x1, py2 - y1), patch.image, patch.alpha))
    frame.set_region_bgr(x1, y1, region)


def hstack(left: YuvFrame, right: YuvFrame) -> YuvFrame:
    """Two frames of the same height side by side (the review video)."""
    a, b = left.planes(), right.planes()
    y, u, v = (np.concatenate([p, q], axis=1) for p, q in zip(a, b))  # (H, W1 + W2), ...
    return YuvFrame(np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)])
                    .reshape(left.height * 3 // 2, left.width + right.width))
