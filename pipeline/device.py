"""Compute resources: device and dtype choice, thread pools (torch, OpenCV), the process-wide
GPU lane, device facts and peak memory. torch is imported only where a function needs it.

Only the generator stage holds :func:`gpu_lock`; decoding, tracking, blending and encoding
of several jobs overlap freely. The lock is re-entrant, so the run loop may hold it around
a whole generator call while the generator holds it again around each forward pass.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.errors import LipSyncError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
MIB = 1024 * 1024
CPU_THREADS_ENV = "LIPSYNC_TORCH_THREADS"  # overrides cpu_threads()
JOB_CORES_ENV = "LIPSYNC_JOB_CORES"  # the cores one job may use (a worker pool sets its share)
DECODE_THREADS_ENV = "LIPSYNC_DECODE_THREADS"  # overrides decode_threads()
QUALITY_WORKERS_ENV = "LIPSYNC_QUALITY_WORKERS"  # overrides quality_workers()

LANE_FILE_ENV = "LIPSYNC_GPU_LANE_FILE"  # set by jobs.workers: one lane for all its workers


class _Lane:
    """A re-entrant lock; across processes too (``flock`` on the file named by LANE_FILE_ENV),
    so the workers of one server take turns on the GPU as threads of one process do. The
    kernel drops a dead holder's ``flock``, so a crashed worker never wedges the lane."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # changed only by the thread holding _lock
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        if not self._lock.acquire(blocking):
            return False
        if self._depth == 0:
            path = os.environ.get(LANE_FILE_ENV)
            if path:
                import fcntl

                if self._fd is None:
                    self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    self._lock.release()
                    return False
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()

    def __enter__(self) -> _Lane:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_GPU_LOCK = _Lane()


def choose_device(pref: str = "auto") -> torch.device:
    """``auto``: CUDA where available, else CPU. ``cuda`` (or ``cuda:N``) without CUDA raises."""
    import torch

    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise LipSyncError(f"device {pref!r} requested but CUDA is not available "
                               f"(torch {torch.__version__}); use device 'auto' or 'cpu'")
        return torch.device(pref)
    raise ValueError(f"unknown device {pref!r}: choose one of {', '.join(DEVICE_CHOICES)}")


def choose_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (Wav2Lip's convs and BatchNorm are fine in half), fp32 elsewhere."""
    import torch

    return torch.float16 if device.type == "cuda" else torch.float32


def env_number(name: str, default: float, *, cast: type = int, minimum: float = 1,
               env: Mapping[str, str] | None = None, error: type[Exception] = ValueError) -> Any:
    """``cast`` of the value of ``name`` in ``env`` (default ``os.environ``), at least
    ``minimum``, else ``default`` when unset; ``error`` naming the variable for anything else."""
    raw = ((os.environ if env is None else env).get(name) or "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise error(f"{name}={raw!r} is not a {cast.__name__}") from None
    if value < minimum:
        raise error(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_count(name: str, default: int, *, minimum: int = 1) -> int:
    """The whole number in ``$name`` (at least ``minimum``), else ``default``."""
    return int(env_number(name, default, minimum=minimum))


@functools.cache
def machine_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's ``--cpus``), rounded up."""
    cores = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here
    return max(1, cores)


def job_cores() -> int:
    """Cores one job may use: ``$LIPSYNC_JOB_CORES`` (a worker pool sets each worker's share
    of the machine), else every core of :func:`machine_cores`."""
    return env_count(JOB_CORES_ENV, machine_cores())


def cpu_threads() -> int:
    """Threads for torch on CPU: ``$LIPSYNC_TORCH_THREADS``, else the job's cores
    (:func:`job_cores`: all of them for one job, each worker's share when several run).

    Measured on 2 cores (Wav2Lip, random weights, monalisa_720p, --no-score): 72.0 s wall with
    one thread (all cores but one, the old default) against 42.5 s with two, though ffmpeg
    decodes and encodes beside it: the forward passes are most of the work.
    """
    return env_count(CPU_THREADS_ENV, job_cores())


def decode_threads() -> int:
    """H.264 decoder threads per decode: ``$LIPSYNC_DECODE_THREADS`` (0: ffmpeg's default, as
    many as the cores), else one per 4 of the job's cores, 1 to 4. One thread decodes 720p
    at ~800 fps, faster than the encoder takes it, and frame threads cost 10-20% more CPU in
    all (0.72-0.79 against 0.59 CPU s for monalisa_720p), so only a job with cores to spare
    (large frames on a large machine) gets more."""
    return env_count(DECODE_THREADS_ENV, max(1, min(4, job_cores() // 4)), minimum=0)


def quality_workers() -> int:
    """Threads computing PSNR/SSIM while scoring decodes: ``$LIPSYNC_QUALITY_WORKERS``, else
    the job's cores, 1 to 4 (scipy's filters release the GIL; there are at most ~60 tasks)."""
    return env_count(QUALITY_WORKERS_ENV, max(1, min(4, job_cores())))


@functools.cache
def configure_cpu_threads() -> int:
    """Set torch's intra-op threads to :func:`cpu_threads` once per process; returns it."""
    import torch

    n = cpu_threads()
    torch.set_num_threads(n)
    log.info("torch CPU threads: %d", n)
    return n


def gpu_lock() -> _Lane:
    """The lock of the generator stage (per process, or per server with workers):
    ``with gpu_lock(): ...``."""
    return _GPU_LOCK


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb(*, children: bool = False) -> float:
    """Peak resident memory so far, in MiB, of this process (or of its finished children)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


NVIDIA_SMI_TIMEOUT_S = 5.0
_SMI_FIELDS = ("index", "name", "memory.used", "memory.total", "driver_version")


def nvidia_gpus() -> list[dict[str, Any]]:
    """Each NVIDIA GPU's index, name, memory used and total (MiB) and driver, read by
    ``nvidia-smi``: another process, so this one never creates a CUDA context (a server
    whose workers run the jobs stays off the GPU). [] where there is no nvidia-smi or GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        log.warning("nvidia-smi did not answer", exc_info=True)
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == len(_SMI_FIELDS):
            with contextlib.suppress(ValueError):
                gpus.append({"index": int(parts[0]), "name": parts[1], "used_mb": float(parts[2]),
                             "total_mb": float(parts[3]), "driver": parts[4]})
    return gpus


def device_facts(*, device: str | None = None, gpu: bool = False) -> dict[str, Any]:
    """This host: CPU model and cores, peak RSS, and torch's version and the GPU's name and
    memory. CUDA is asked only where this process already uses it (a worker, a threads
    executor after a GPU job); otherwise ``gpu=True`` (the System tab) reads the GPU through
    :func:`nvidia_gpus` and torch's version from its package metadata, so a server whose
    workers run the jobs never imports torch nor initialises CUDA; ``gpu=False`` (a job's
    record) leaves the GPU out there."""
    facts: dict[str, Any] = {"device": device, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                             "usable_cores": machine_cores(), "peak_rss_mb": round(peak_rss_mb(), 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        facts.update({
            "torch": torch.__version__, "cuda": True,
            "gpu_model": torch.cuda.get_device_name(index),
            "gpu_memory_total_mb": round(total / MIB),
            "gpu_memory_used_mb": round((total - free) / MIB),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / MIB, 1),
            "cuda_version": torch.version.cuda,
        })
        return facts
    if torch is not None:
        facts["torch"] = torch.__version__
    if not gpu:
        return facts
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        facts["torch"] = importlib.metadata.version("torch")
    gpus = nvidia_gpus()
    facts["cuda"] = bool(gpus)
    if gpus:
        facts.update({"gpu_model": gpus[0]["name"], "gpu_memory_total_mb": round(gpus[0]["total_mb"]),
                      "gpu_memory_used_mb": round(gpus[0]["used_mb"]), "driver_version": gpus[0]["driver"]})
    return facts


# ---- OpenCV's thread pool ----------------------------------------------------------------
# OpenCV's process-wide thread pool, sized once for the pipeline's way of working.
#
# OpenCV splits each call (a crop's resize, a colour conversion) over a pool as wide as the
# machine. The pipeline's work runs beside its ffmpeg decoder and encoder processes, which
# already keep the cores busy, and its OpenCV calls work on face-sized crops, where handing
# rows to other threads costs more than it saves. Measured on the 2-core machine (monalisa
# 720p, baseline generator, 6 alternating runs each): 1 thread took 4.75 s wall and 8.40 CPU
# seconds against 5.08 s and 9.03 s with the default pool. Worker processes each get their
# own pool, so wide pools would also oversubscribe the cores when workers run at once (2
# baseline jobs on 2 cores: 0.92x one job's throughput with 2 threads each). ``run()`` and
# ``score_videos()`` call :func:`configure_opencv_threads`; ``$LIPSYNC_OPENCV_THREADS``
# overrides it (0 is OpenCV's default: all cores).

OPENCV_THREADS_ENV = "LIPSYNC_OPENCV_THREADS"
DEFAULT_OPENCV_THREADS = 1


@functools.cache
def configure_opencv_threads() -> int:
    """Set OpenCV's threads to ``$LIPSYNC_OPENCV_THREADS`` (default 1) once per process."""
    value = os.environ.get(OPENCV_THREADS_ENV, "").strip()
    n = max(0, int(value)) if value else DEFAULT_OPENCV_THREADS
    import cv2

    cv2.setNumThreads(n)
    log.info("OpenCV threads: %s", n or "all cores")
    return n


# ---- numpy's BLAS threads ----------------------------------------------------------------
# numpy's matrix products in a job are small (a mel filterbank over a clip's spectrum, the
# sync proxy's per-lag fits), and OpenBLAS splits each over as many threads as cores, whose
# workers then spin on the cores the ffmpeg decoder and encoder need. Measured on the
# 2-core machine (monalisa 720p, baseline CLI job, 3 alternating runs each): one thread took
# 2.98-3.15 s wall and 5.1-5.4 CPU s against 3.12-3.29 s and 5.5-5.7 CPU s with OpenBLAS's
# default; scoring (bench/scoring_cost.py's call) spent 0.09 CPU s more when its speech
# measures ran outside a one-thread limit. ``run()`` and ``score_videos()`` call
# :func:`configure_blas_threads`; ``$LIPSYNC_BLAS_THREADS`` overrides it (0: the library's
# default). torch's own threads are :func:`configure_cpu_threads`'.

BLAS_THREADS_ENV = "LIPSYNC_BLAS_THREADS"
DEFAULT_BLAS_THREADS = 1


@functools.cache
def configure_blas_threads() -> int:
    """Set the BLAS libraries' threads (numpy's, scipy's) to ``$LIPSYNC_BLAS_THREADS``
    (default 1) once per process; returns the setting (0: left to the libraries)."""
    value = os.environ.get(BLAS_THREADS_ENV, "").strip()
    n = max(0, int(value)) if value else DEFAULT_BLAS_THREADS
    if n:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")  # process-wide, kept (not a context)
    log.info("BLAS threads: %s", n or "the libraries' default")
    return n


# ---- glibc's allocator --------------------------------------------------------------------
# torch's CPU kernels allocate and free their activations (a few MB each) on every forward.
# glibc maps blocks above its (dynamic) mmap threshold afresh, and hands the heap's free top
# back to the kernel once more than twice that threshold is free: each batch then faults its
# pages in again, in the kernel. Measured on the 2-core machine (Wav2Lip, random weights,
# 200 faces, batch 8, bench/malloc_forward.py): 5.2-6.5 s wall with 0.5-2.4 s of system time
# and 0.25-1.3 M page faults, against 4.9-5.1 s, 0.01-0.09 s and 4-33 k with a fixed 32 MB
# mmap threshold and a 256 MB trim threshold (128 MB: about the same; 64 MB: no better than
# glibc's defaults; the fixed mmap threshold alone: worse, 8.5-8.7 s, the heap trimmed at
# every free). Peak RSS about the same (568-664 MB against 574-594). The cost: up to 256 MB
# of freed memory stays with the process, to be reused. ``run()`` and
# ``score_videos()`` call :func:`configure_malloc` (through :func:`configure_process`);
# ``$LIPSYNC_MALLOC_TRIM_MB`` sets the trim threshold (0: glibc's defaults, untouched).

MALLOC_TRIM_ENV = "LIPSYNC_MALLOC_TRIM_MB"
DEFAULT_MALLOC_TRIM_MB = 256
MALLOC_MMAP_THRESHOLD = 32 * 2**20  # bytes: glibc's largest mmap threshold on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>


@functools.cache
def configure_malloc() -> int:
    """Fix glibc's mmap threshold and set its trim threshold to ``$LIPSYNC_MALLOC_TRIM_MB``
    (default 256) once per process; returns the trim threshold in MB (0: left as it was,
    also where the C library is not glibc)."""
    value = os.environ.get(MALLOC_TRIM_ENV, "").strip()
    mb = max(0, int(value)) if value else DEFAULT_MALLOC_TRIM_MB
    if mb:
        import ctypes

        libc = ctypes.CDLL(None)  # the C library this process runs on
        if not hasattr(libc, "gnu_get_libc_version"):
            mb = 0  # musl and others: their mallopt is not glibc's
        # the mmap threshold first: glibc refuses one above its limit and changes nothing,
        # while either call fixes both thresholds (no more dynamic ones), and the trim
        # threshold is always accepted
        elif not (libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) and
                  libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(mb * 2**20, 2**31 - 1)))):
            log.warning("glibc's mallopt refused the allocator settings; its defaults stay")
            mb = 0
    log.info("malloc trim threshold: %s", f"{mb} MB" if mb else "the C library's default")
    return mb


def configure_process() -> None:
    """Every per-process setting a job or a scoring needs: OpenCV's and BLAS's threads and
    glibc's allocator (each once per process)."""
    configure_opencv_threads()
    configure_blas_threads()
    configure_malloc()
