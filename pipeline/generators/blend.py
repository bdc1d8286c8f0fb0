"""Pasting a generated face region back into its frame with a feathered alpha mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATHER = 0.12  # fraction of the patch's smaller side over which the default mask fades out


@dataclass(frozen=True, eq=False)
class Patch:
    """A generated region: ``image`` goes at ``box`` of the frame, weighted by ``alpha``."""

    box: tuple[int, int, int, int]  # (x1, y1, x2, y2) in frame pixels; may reach past the frame
    image: np.ndarray  # (h, w, 3) uint8 with h = y2 - y1, w = x2 - x1
    alpha: np.ndarray  # (h, w) float32 in [0, 1]

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = self.box
        h, w = y2 - y1, x2 - x1
        if self.image.shape != (h, w, 3) or self.alpha.shape != (h, w):
            raise ValueError(f"patch box {self.box} is {w}x{h} but image is {self.image.shape} "
                             f"and alpha is {self.alpha.shape}")


def feather_mask(h: int, w: int, *, feather: float = FEATHER) -> np.ndarray:
    """(h, w) float32: 1 inside, falling smoothly (raised cosine) to 0 at the border."""
    def ramp(n: int) -> np.ndarray:
        k = max(1, int(round(feather * min(h, w))))
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)  # distance to the edge
        t = np.clip((d + 0.5) / k, 0.0, 1.0)
        return 0.5 - 0.5 * np.cos(np.pi * t)

    return np.outer(ramp(h), ramp(w)).astype(np.float32)


def paste(frame: np.ndarray, patch: Patch) -> np.ndarray:
    """Composite ``patch`` onto ``frame`` in place (float32 math, rounded and clipped to
    uint8) and return ``frame``. Parts of the patch outside the frame are ignored."""
    fh, fw = frame.shape[:2]
    x1, y1, x2, y2 = patch.box
    cx1, cy1, cx2, cy2 = max(0, x1), max(0, y1), min(fw, x2), min(fh, y2)
    if cx1 >= cx2 or cy1 >= cy2:
        return frame
    rows, cols = slice(cy1 - y1, cy2 - y1), slice(cx1 - x1, cx2 - x1)
    a = patch.alpha[rows, cols]
    src = patch.image[rows, cols].astype(np.float32)
    dst = frame[cy1:cy2, cx1:cx2]
    out = dst.astype(np.float32)
    out += (src - out) * a[:, :, None]  # (h, w, 1) broadcast over channels
    dst[:] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return frame

