"""OpenCV's pool and numpy's BLAS threads are sized by ``$LIPSYNC_OPENCV_THREADS`` and
``$LIPSYNC_BLAS_THREADS`` (default 1 each) once per process."""

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


BLAS_PROBE = ("import numpy; from threadpoolctl import threadpool_info; "
              "from pipeline.device import configure_blas_threads; n = configure_blas_threads(); "
              "print(n, *sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")


@pytest.mark.parametrize(("env", "expected"), [(None, "1 1"), ("3", "3 3")])
def test_blas_threads_setting(env: str | None, expected: str) -> None:
    """numpy's BLAS (OpenBLAS) is set to ``$LIPSYNC_BLAS_THREADS`` threads, default 1, for the
    whole process (it would otherwise start one spinning thread per core)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("LIPSYNC_BLAS_THREADS", "OPENBLAS_NUM_THREADS",
                                                               "OMP_NUM_THREADS")}
    if env is not None:
        environ["LIPSYNC_BLAS_THREADS"] = env
    out = subprocess.run([sys.executable, "-c", BLAS_PROBE], cwd=ROOT, env=environ, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert " ".join(out) == expected
