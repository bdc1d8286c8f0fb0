"""Landmark fits on full-resolution I420 frames: the crop scaled by area averaging (the
default) against linear interpolation (the baseline generator's choice), side by side.

    .venv/bin/python bench/landmark_crops.py [--frames 150] [--video monalisa_720p.mp4]

``FaceTracker.landmarks_in`` on the clip's own decoded frames (dlib, the first face of frame 0
as the box), CPU seconds per fit of this thread, alternating the two over the same frames,
and how far the 68 points of the linear crops land from those of the area crops (mean, the
mouth's mean and the largest, in frame pixels) with the frame-to-frame jitter of the mouth
points of each (a steady face moves little: lower is steadier).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from common import media_dir, median, peak_rss_mb

from pipeline.faces.backends import make_tracker
from pipeline.media.decode import read_frames
from pipeline.media.yuv import YuvFrame

METHODS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--video", default="monalisa_720p.mp4")
    args = ap.parse_args()
    frames = []
    for data in read_frames(media_dir() / args.video, pix_fmt="yuv420p"):
        frames.append(YuvFrame(data))
        if len(frames) == args.frames:
            break
    tracker = make_tracker("dlib")
    tracker.load()
    face = tracker.detect(frames[0].to_bgr(), landmarks=False)[0]
    points: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    for frame in frames:
        for name, method in METHODS.items():
            t = time.thread_time()
            fitted = tracker.landmarks_in(frame, face, interpolation=method)
            cpu[name].append(time.thread_time() - t)
            points[name].append(fitted.landmarks)
    area, linear = np.array(points["area"]), np.array(points["linear"])  # (n, 68, 2)
    gap = np.linalg.norm(linear - area, axis=2)  # (n, 68)
    print(f"clip: {args.video}, {len(frames)} frames, face box {face.width:.0f} px wide")
    for name in METHODS:
        mouth = np.array(points[name])[:, 48:]
        jitter = float(np.linalg.norm(np.diff(mouth, axis=0), axis=2).mean())
        print(f"  {name:<7} {1000 * median(cpu[name]):.3f} ms per fit (median CPU)   "
              f"mouth jitter {jitter:.2f} px per frame")
    ratio = median(cpu["linear"]) / median(cpu["area"])
    print(f"linear / area: {ratio:.2f}x CPU per fit; points apart: mean {gap.mean():.2f} px, "
          f"mouth mean {gap[:, 48:].mean():.2f} px, largest {gap.max():.2f} px")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
