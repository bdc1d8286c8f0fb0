"""Shared helpers of the benchmark scripts: media location, timing, peak RSS of children."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
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


def run_child(cmd: list[str]) -> tuple[float, str, float]:
    """Run ``cmd`` (in the project root) to its end: its wall seconds, its stdout and its own
    peak RSS in MiB (``os.wait4``'s ``ru_maxrss``; its children's not included); exit with its
    stderr when it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"{' '.join(map(str, cmd[:4]))}... failed: {err.read().decode(errors='replace').strip()[-2000:]}")
        out.seek(0)
        return wall, out.read().decode(), usage.ru_maxrss / 1024
