"""Where the generator runs: device and dtype choice, the process-wide GPU lane, device facts.

Only the generator stage holds :func:`gpu_lock`; decoding, tracking, blending and encoding
of several jobs overlap freely. The lock is re-entrant, so the run loop may hold it around
a whole generator call while the generator holds it again around each forward pass.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import threading

import torch

from pipeline.errors import LipSyncError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
MIB = 1024 * 1024
CPU_THREADS_ENV = "LIPSYNC_TORCH_THREADS"  # overrides cpu_threads()

LANE_FILE_ENV = "LIPSYNC_GPU_LANE_FILE"  # set by pipeline.worker: one lane for all its workers


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
    return torch.float16 if device.type == "cuda" else torch.float32


def cpu_threads() -> int:
    """Threads for torch on CPU: ``$LIPSYNC_TORCH_THREADS``, else all usable cores but one.

    The generator runs while ffmpeg decodes and encodes the same job; torch's OpenMP
    threads spin on their barriers, so one core taken by ffmpeg slows every layer. On 2
    cores a 1-thread forward is 2.3x faster than a 2-thread one next to a libx264 encode
    (271 vs 637 ms per frame, measured here), and faster even without it.
    """
    value = os.environ.get(CPU_THREADS_ENV, "").strip()
    if value:
        return max(1, int(value))
    return max(1, len(os.sched_getaffinity(0)) - 1)


@functools.cache
def configure_cpu_threads() -> int:
    """Set torch's intra-op threads to :func:`cpu_threads` once per process; returns it."""
    n = cpu_threads()
    torch.set_num_threads(n)
    log.info("torch CPU threads: %d", n)
    return n


def gpu_lock() -> _Lane:
    """The lock of the generator stage (per process, or per server with workers):
    ``with gpu_lock(): ...``."""
    return _GPU_LOCK


@functools.cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_facts() -> dict[str, object]:
    """CPU model and cores, torch version, and the GPU's name and memory where CUDA works."""
    facts: dict[str, object] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    if facts["cuda"]:
        index = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        facts.update({
            "gpu_model": torch.cuda.get_device_name(index),
            "gpu_memory_total_mb": round(total / MIB),
            "gpu_memory_used_mb": round((total - free) / MIB),
            "cuda_version": torch.version.cuda,
        })
    return facts
