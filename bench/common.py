"""Shared helpers of the benchmark scripts: media location, timing, peak RSS of children."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.device import peak_rss_mb  # noqa: E402,F401 - the benches' one measure of memory


def media_dir() -> Path:
    """``$LIPSYNC_TEST_MEDIA`` or ``../shared/media``; exits with a message when absent."""
    path = Path(os.environ.get("LIPSYNC_TEST_MEDIA") or ROOT.parent / "shared" / "media")
    if not path.is_dir():
        sys.exit(f"benchmark media not found at {path}: set LIPSYNC_TEST_MEDIA")
    return path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(runs: int, *, warmup: int = 0, **fns: Callable[[], object]) -> dict[str, list[float]]:
    """Run each named function ``runs`` times, interleaved (a, b, a, b, ...), in one process,
    after ``warmup`` untimed rounds (models loaded, caches filled: a server's steady state)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            out[name].append(timed(fn))
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_child(cmd: list[str]) -> tuple[float, str]:
    """Run ``cmd``; return its wall seconds and stdout; exit with its stderr on failure."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])}... failed: {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - start, proc.stdout
