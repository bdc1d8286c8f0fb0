"""OpenCV's pool and numpy's BLAS threads are sized by ``$LIPSYNC_OPENCV_THREADS`` and
``$LIPSYNC_BLAS_THREADS`` (default 1 each) once per process; glibc's allocator keeps freed
memory for reuse up to ``$LIPSYNC_MALLOC_TRIM_MB``."""

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


# Frees 60 MB at the heap's top: with glibc's defaults (after the first 20 MB block is
# unmapped, its trim threshold is 40 MB) the top goes back to the kernel, so the next round
# faults it in again; with the job's settings (a 256 MB trim threshold) it stays for reuse.
MALLOC_PROBE = """
import resource
import numpy as np
from pipeline.device import configure_malloc
mb = configure_malloc()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
def one_round():
    blocks = [np.ones(20 * 2**20, np.uint8) for _ in range(3)]  # touches every page
    del blocks
before = rss()
for _ in range(2):  # glibc's dynamic thresholds settle on the first unmapped block
    one_round()
print(mb, rss() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the RSS from /proc")
def test_malloc_settings_keep_freed_memory_for_reuse() -> None:
    """``configure_malloc`` (every job's and scoring's, through ``configure_process``) keeps
    freed blocks for reuse: after allocating and freeing 60 MB, glibc's defaults
    (``LIPSYNC_MALLOC_TRIM_MB=0``) have handed it back to the kernel (to fault it in again on
    the next round: about 20% of a Wav2Lip CPU forward's time, bench/malloc_forward.py); the
    default setting keeps it."""
    kept = {}
    for env in ("0", None):
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("LIPSYNC_MALLOC", "MALLOC_"))}
        if env is not None:
            environ["LIPSYNC_MALLOC_TRIM_MB"] = env
        mb, grown = subprocess.run([sys.executable, "-c", MALLOC_PROBE], cwd=ROOT, env=environ, capture_output=True,
                                   text=True, timeout=120, check=True).stdout.split()
        kept[int(mb)] = int(grown) / 2**20
    assert set(kept) == {0, 256}
    assert kept[0] < 40, kept  # a third or more handed back (21 MB kept here)
    assert kept[256] > 55, kept  # all of it kept (60 MB)
