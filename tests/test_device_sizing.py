"""Threads sized to the job from the machine, the encoder choice, and device facts that keep
a server off torch and CUDA: real processes (a real worker pool), real ffmpeg."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pipeline import device
from pipeline.media.encode import NVENC_DEVICE, choose_encoder, nvenc_usable

ROOT = Path(__file__).resolve().parents[1]


def test_torch_decode_and_quality_threads_follow_the_jobs_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (device.CPU_THREADS_ENV, device.DECODE_THREADS_ENV, device.QUALITY_WORKERS_ENV,
                 device.JOB_CORES_ENV):
        monkeypatch.delenv(name, raising=False)
    assert device.job_cores() == device.machine_cores() >= 1
    assert device.cpu_threads() == device.machine_cores()  # one job: every core, not "all but one"
    monkeypatch.setenv(device.JOB_CORES_ENV, "16")
    assert (device.cpu_threads(), device.decode_threads(), device.quality_workers()) == (16, 4, 4)
    monkeypatch.setenv(device.JOB_CORES_ENV, "2")
    assert (device.cpu_threads(), device.decode_threads(), device.quality_workers()) == (2, 1, 2)
    monkeypatch.setenv(device.CPU_THREADS_ENV, "3")
    monkeypatch.setenv(device.DECODE_THREADS_ENV, "0")  # ffmpeg's own default
    assert (device.cpu_threads(), device.decode_threads()) == (3, 0)
    monkeypatch.setenv(device.JOB_CORES_ENV, "many")
    with pytest.raises(ValueError, match="LIPSYNC_JOB_CORES='many'"):
        device.job_cores()


def test_each_worker_gets_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool hands each worker cores / size (LIPSYNC_JOB_CORES in its environment), which
    its torch threads follow; nothing in pipeline.device overrides it."""
    from jobs.workers import WorkerPool

    monkeypatch.setenv(device.JOB_CORES_ENV, "8")
    monkeypatch.delenv(device.CPU_THREADS_ENV, raising=False)
    pool = WorkerPool(4)
    try:
        pool.start()
        workers = [p for p in psutil.Process().children() if "jobs.workers" in " ".join(p.cmdline())]
        assert len(workers) == 4
        assert {p.environ().get(device.JOB_CORES_ENV) for p in workers} == {"2"}
    finally:
        pool.close()
    env = {**os.environ, device.JOB_CORES_ENV: "2"}
    out = subprocess.run([sys.executable, "-c", "from pipeline.device import configure_cpu_threads; "
                          "import torch; configure_cpu_threads(); print(torch.get_num_threads())"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[-1] == "2"


def test_auto_encoder_is_libx264_without_an_nvidia_driver() -> None:
    if Path(NVENC_DEVICE).exists():
        pytest.skip("an NVIDIA driver is loaded here: auto may rightly pick h264_nvenc")
    assert not nvenc_usable()
    assert choose_encoder("auto") == "libx264" and choose_encoder("h264_nvenc") == "h264_nvenc"


def test_system_facts_import_neither_torch_nor_cuda() -> None:
    """What the System tab and /metrics read in the server: no torch import (so no CUDA
    context) and torch's version from its package metadata."""
    code = ("import sys; from pipeline.device import device_facts, nvidia_gpus; "
            "f = device_facts(gpu=True); nvidia_gpus(); "
            "print('torch' in sys.modules, f['torch'].startswith('2.13.0'), f['usable_cores'] >= 1)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["False", "True", "True"], out.stdout

