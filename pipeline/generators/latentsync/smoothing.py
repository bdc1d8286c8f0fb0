"""The alignment smoothed over frames: the three points (brows, nose) that give each frame's
similarity transform go through a one-euro filter (Casiez et al. 2012) before the fit, so the
256 x 256 face does not shake with the landmarks' jitter yet follows a moving head.

Causal, with its state kept across the run loop's batches. A frame without a face, or a jump
larger than ``CUT_JUMP`` of the face's size between consecutive frames (a cut), starts afresh.
Speeds are in face sizes (the distance between the brow centres) per second, so the filter
behaves the same at any resolution. (The official inference smooths the fit's translation with a
fixed 0.8 / 0.2 exponential average instead, which lags a moving head.)
"""

from __future__ import annotations

import math

import numpy as np

MIN_CUTOFF_HZ = 0.5  # cutoff of a still face: its jitter is removed (2 px of jitter: 0.45 of it left)
BETA = 4.0  # Hz added to the cutoff per face size per second of movement (0.5 faces/s: ~2 px of lag)
SPEED_CUTOFF_HZ = 0.5  # cutoff of the velocity estimate itself
CUT_JUMP = 0.25  # a point moving more than this many face sizes in one frame starts afresh


def _alpha(cutoff_hz: float, fps: float) -> float:
    """The one-pole low-pass weight of the newest sample at ``cutoff_hz``."""
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau * fps)


class PointSmoother:
    """One-euro filter of (3, 2) alignment points, one call per consecutive frame."""

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next frame's points pass unchanged (after a gap or a cut)."""
        self.points: np.ndarray | None = None
        self.velocity = np.zeros((3, 2))  # px per second, smoothed

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """The smoothed (3, 2) points of this frame."""
        points = np.asarray(points, np.float64)
        if self.points is None:
            self.points = points.copy()
            return points
        size = max(float(np.linalg.norm(points[1] - points[0])), 1.0)  # brow to brow, px
        step = np.linalg.norm(points - self.points, axis=1).max() / size  # face sizes since the last frame
        if step > CUT_JUMP:
            self.reset()
            return self(points)
        # the signed velocity is smoothed (jitter averages out), then its size sets the cutoff
        self.velocity += _alpha(SPEED_CUTOFF_HZ, self.fps) * ((points - self.points) * self.fps - self.velocity)
        speed = np.linalg.norm(self.velocity, axis=1).max() / size  # face sizes per second
        a = _alpha(MIN_CUTOFF_HZ + BETA * speed, self.fps)
        self.points = self.points + a * (points - self.points)
        return self.points.copy()
