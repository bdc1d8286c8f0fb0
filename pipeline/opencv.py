"""OpenCV's process-wide thread pool, sized once for the pipeline's way of working.

OpenCV splits each call (a crop's resize, a colour conversion) over a pool as wide as the
machine. The pipeline's work runs beside its ffmpeg decoder and encoder processes, which
already keep the cores busy, and its OpenCV calls work on face-sized crops, where handing
rows to other threads costs more than it saves. Measured on the 2-core machine (monalisa
720p, baseline generator, 6 alternating runs each): 1 thread took 4.75 s wall and 8.40 CPU
seconds against 5.08 s and 9.03 s with the default pool. Worker processes each get their
own pool, so wide pools would also oversubscribe the cores when workers run at once (2
baseline jobs on 2 cores: 0.92x one job's throughput with 2 threads each). ``run()`` and
``score_videos()`` call :func:`configure_opencv_threads`; ``$LIPSYNC_OPENCV_THREADS``
overrides it (0 is OpenCV's default: all cores).
"""

from __future__ import annotations

import functools
import logging
import os

import cv2

log = logging.getLogger(__name__)

OPENCV_THREADS_ENV = "LIPSYNC_OPENCV_THREADS"
DEFAULT_OPENCV_THREADS = 1


@functools.cache
def configure_opencv_threads() -> int:
    """Set OpenCV's threads to ``$LIPSYNC_OPENCV_THREADS`` (default 1) once per process."""
    value = os.environ.get(OPENCV_THREADS_ENV, "").strip()
    n = max(0, int(value)) if value else DEFAULT_OPENCV_THREADS
    cv2.setNumThreads(n)
    log.info("OpenCV threads: %s", n or "all cores")
    return n
