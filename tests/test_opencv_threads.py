"""OpenCV's pool is sized by ``$LIPSYNC_OPENCV_THREADS`` (default 1) once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import cv2; from pipeline.device import configure_opencv_threads; "
         "n = configure_opencv_threads(); print(n, cv2.getNumThreads())")


@pytest.mark.parametrize(("env", "expected"), [(None, "1 1"), ("3", "3 3")])
def test_opencv_threads_setting(env: str | None, expected: str) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "LIPSYNC_OPENCV_THREADS"}
    if env is not None:
        environ["LIPSYNC_OPENCV_THREADS"] = env
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=environ, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert " ".join(out) == expected
