"""Start-up: a passthrough or baseline CLI job imports none of the heavy libraries it does not
use (torch, scipy.signal, librosa and its numba, scikit-image), read from the interpreter's
own ``python -X importtime`` report of the whole process; the native modules it does use are
imported ahead, and a process refused at once still exits cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "scipy.signal", "librosa", "numba", "skimage")
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$")


def imported_modules(report: str) -> dict[str, int]:
    """Module -> cumulative microseconds, from ``-X importtime``'s stderr report."""
    out: dict[str, int] = {}
    for line in report.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            out[m.group(3)] = int(m.group(1))
    return out


def run_importtime(package: str, *args: str, data_dir: Path) -> dict[str, int]:
    env = {**os.environ, "LIPSYNC_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", package, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = imported_modules(proc.stderr)
    assert "pipeline.run" in modules, "the importtime report was not read"
    return modules


def test_importtime_parser_sees_heavy_imports() -> None:
    """The report parser finds a heavy import where there is one (so the tests below can fail)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import scipy.signal"],
                          capture_output=True, text=True, timeout=120)
    assert "scipy.signal" in imported_modules(proc.stderr)


@pytest.mark.parametrize("model", ["passthrough", "baseline"])
@pytest.mark.parametrize("package", ["pipeline", "jobs"])
def test_cli_job_imports_no_heavy_library(package: str, model: str, face_mp4: Path,
                                          speech_wav: Path, tmp_path: Path) -> None:
    extra = ("--no-score", "--no-record") if package == "jobs" else ()
    modules = run_importtime(package, "run", str(face_mp4), str(speech_wav), "-o",
                             str(tmp_path / "out.mp4"), "--model", model, *extra,
                             data_dir=tmp_path / "data")
    heavy = sorted(m for m in modules if m in HEAVY)
    assert heavy == [], f"{package} run --model {model} imported {heavy}"
    # dlib is imported ahead, beside the probes, only for a job that may track faces with it
    assert ("dlib" in modules) == (model == "baseline"), f"{package} run --model {model}: dlib"
    assert "av" in modules  # the in-process decode (imported ahead as well)


def test_a_job_refused_at_once_exits_with_its_error_while_importing_ahead(tmp_path: Path) -> None:
    """A job its probe refuses within milliseconds ends the process while the job's imports
    ahead (PyAV, dlib: tens of ms of native initialisation on another thread) still run: the
    process waits for them and exits with the CLI's code for a bad input and its message,
    never an abort or a traceback."""
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(junk), str(junk), "-o",
                               str(tmp_path / "out.mp4"), "--model", "baseline"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "is not a media file" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_process_that_exits_at_once_waits_for_the_warm_up(tmp_path: Path) -> None:
    """The in-process executor's warm-up runs in native code (dlib, cv2). A process that ends
    right after starting it must let it finish first: a daemon thread still in native code at
    finalisation is ended by pthread_exit there and the process aborts. The atexit handler
    runs after the interpreter has joined its non-daemon threads, so it sees whether the
    warm-up was waited for; the warm-up takes far longer than the main thread here. (A warm-up
    cut short by the exit may end early, refused new atexit hooks; it must end quietly.)"""
    code = ("import atexit, sys, threading\n"
            "from jobs.executors import make_executor\n"
            "atexit.register(lambda: print('alive at exit:', sorted(t.name for t in threading.enumerate()"
            " if t is not threading.main_thread()), flush=True))\n"
            "make_executor('threads').start()\n")
    env = {**os.environ, "LIPSYNC_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "alive at exit: []", proc.stdout
    assert "warm-up failed" not in proc.stderr, proc.stderr[-2000:]
