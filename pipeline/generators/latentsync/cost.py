"""What a LatentSync job will cost on the CPU, measured on the loaded model before the job starts.

Once per process and loaded model (and guidance on or off: guidance doubles each call's batch),
one UNet call on ``PROBE_FRAMES`` frames of random latents is timed; its seconds per frame and
step, times the job's frames and steps, are the job's estimate. The UNet is the job's cost (the
VAE and the face warps add a few percent); the estimate is what lets a CPU job refuse to start
when it would run past its time limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable

import torch

from .mask import FACE_SIZE
from .unet import LatentSyncUNet
from .vae import DOWNSCALE

log = logging.getLogger(__name__)

PROBE_FRAMES = 2  # frames of the timed call (the cost grows linearly in frames: a short call suffices)
AUDIO_TOKENS = 50  # tokens per frame (whisper: 5 layers x 10 positions)
TIMESTEP = 500  # any timestep costs the same

_measured: dict[Hashable, float] = {}
_lock = threading.Lock()


def _time_one_call(unet: LatentSyncUNet, *, batch: int, frames: int) -> float:
    cfg = unet.config
    side = FACE_SIZE // DOWNSCALE  # latents of 256 / 8 = 32 x 32
    device, dtype = unet.conv_in.weight.device, unet.dtype
    generator = torch.Generator(device="cpu").manual_seed(0)
    sample = torch.randn((batch, cfg.in_channels, frames, side, side), generator=generator)  # (B, 13, F, 32, 32)
    tokens = torch.randn((batch, frames, AUDIO_TOKENS, cfg.cross_attention_dim), generator=generator)  # (B, F, 50, 384)
    with torch.inference_mode():
        start = time.perf_counter()
        unet(sample.to(device, dtype), torch.tensor(TIMESTEP, device=device), tokens.to(device, dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


def seconds_per_frame_step(unet: LatentSyncUNet, *, key: Hashable, guided: bool) -> float:
    """Seconds one frame costs per DDIM step (one UNet call, both halves when ``guided``),
    measured once per (``key``, guided) in this process."""
    cache_key = (key, guided)
    with _lock:
        if cache_key not in _measured:
            seconds = _time_one_call(unet, batch=2 if guided else 1, frames=PROBE_FRAMES)
            _measured[cache_key] = seconds / PROBE_FRAMES
            log.info("latentsync: %.3f s per frame and step (one %d-frame UNet call timed, guidance %s)",
                     _measured[cache_key], PROBE_FRAMES, "on" if guided else "off")
        return _measured[cache_key]


def measurements() -> int:
    """How many models this process has timed (tests)."""
    with _lock:
        return len(_measured)
