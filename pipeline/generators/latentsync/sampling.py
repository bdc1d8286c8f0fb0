"""DDIM sampling of LatentSync latents with classifier-free guidance, on tensors only.

The UNet is any callable ``unet(sample, timestep, encoder_hidden_states) -> noise``. Frames go
through it in chunks of 16 (the last may be shorter); each chunk runs the whole DDIM schedule.
Its input channels, in order: the noisy latents (4), the keep-mask at latent size (1), the
latents of the mouth-blanked face (4), the latents of the whole face (4) = 13. With guidance
above 1 every call holds two halves, [all-zero audio, audio], combined as
``uncond + guidance * (audio - uncond)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pipeline.options import DEFAULT_GUIDANCE, DEFAULT_STEPS

if TYPE_CHECKING:
    from diffusers import DDIMScheduler

log = logging.getLogger(__name__)

UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# the official configs/scheduler_config.json (a diffusers DDIMScheduler config)
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
    "skip_prk_steps": True,
}
FRAMES_PER_CALL = 16  # frames per UNet call; the motion modules take at most 24
ETA = 0.0  # deterministic DDIM
LATENT_CHANNELS = 4


@dataclass(frozen=True)
class SamplingOptions:
    """steps: DDIM steps; guidance: classifier-free guidance scale (<= 1: none); seed: the same
    inputs and seed give the same output; frames_per_call: frames per UNet call."""

    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0
    frames_per_call: int = FRAMES_PER_CALL

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not 1 <= self.frames_per_call <= 24:
            raise ValueError(f"frames_per_call must be 1 to 24, got {self.frames_per_call}")


def make_scheduler(steps: int) -> DDIMScheduler:
    """A DDIMScheduler with the official config, its timesteps set for ``steps`` steps
    (diffusers is imported here: it is slow to import and only sampling needs it)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    return scheduler


def initial_noise(frames: int, size: tuple[int, int], *, generator: torch.Generator,
                  sigma: float = 1.0) -> torch.Tensor:
    """One noise frame repeated over all ``frames``, times the scheduler's ``init_noise_sigma``:
    (1, 4, F, h, w) float32, drawn on the generator's device."""
    one = torch.randn((1, LATENT_CHANNELS, 1, *size), generator=generator, device=generator.device)  # (1, 4, 1, h, w)
    return one.repeat(1, 1, frames, 1, 1) * sigma  # (1, 4, F, h, w)


def denoise(unet: UNetFn, *, noise: torch.Tensor, mask: torch.Tensor, masked_latents: torch.Tensor,
            ref_latents: torch.Tensor, audio: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Sample latents for every frame: (F, 4, h, w) float32.

    noise (1, 4, F, h, w) from :func:`initial_noise`; mask (1, 1, h, w) or (F, 1, h, w), 1 = kept;
    masked_latents and ref_latents (F, 4, h, w); audio tokens (F, 50, 384). Tensors are used on
    ``audio``'s device.
    """
    frames = audio.shape[0]
    if noise.shape[2] != frames or masked_latents.shape[0] != frames or ref_latents.shape[0] != frames:
        raise ValueError(f"frame counts differ: noise {noise.shape[2]}, masked {masked_latents.shape[0]}, "
                         f"reference {ref_latents.shape[0]}, audio {frames}")
    device = audio.device
    mask = mask.expand(frames, -1, -1, -1)  # (F, 1, h, w)
    cond = torch.cat([mask, masked_latents, ref_latents], dim=1).to(device, torch.float32)  # (F, 9, h, w)
    cond = cond.transpose(0, 1)[None]  # (1, 9, F, h, w)
    noise = noise.to(device, torch.float32)
    chunks = []
    for start in range(0, frames, options.frames_per_call):
        end = min(start + options.frames_per_call, frames)
        chunks.append(_denoise_chunk(unet, noise[:, :, start:end], cond[:, :, start:end], audio[start:end],
                                     options))
    latents = torch.cat(chunks, dim=2)  # (1, 4, F, h, w)
    return latents[0].transpose(0, 1)  # (F, 4, h, w)


def _denoise_chunk(unet: UNetFn, latents: torch.Tensor, cond: torch.Tensor, audio: torch.Tensor,
                   options: SamplingOptions) -> torch.Tensor:
    """All DDIM steps for one chunk: latents (1, 4, f, h, w), cond (1, 9, f, h, w), audio (f, 50, 384)."""
    scheduler = make_scheduler(options.steps)
    guided = options.guidance > 1.0
    tokens = audio[None]  # (1, f, 50, 384)
    if guided:
        tokens = torch.cat([torch.zeros_like(tokens), tokens])  # (2, f, 50, 384): [unconditional, audio]
        cond = torch.cat([cond, cond])  # (2, 9, f, h, w)
    for t in scheduler.timesteps:
        x = torch.cat([latents, latents]) if guided else latents  # (2 or 1, 4, f, h, w)
        x = scheduler.scale_model_input(x, t)
        with torch.no_grad():
            pred = unet(torch.cat([x, cond], dim=1), t.to(latents.device), tokens).float()  # (2 or 1, 4, f, h, w)
        if guided:
            uncond, cond_pred = pred.chunk(2)
            pred = uncond + options.guidance * (cond_pred - uncond)
        latents = scheduler.step(pred, t, latents, eta=ETA).prev_sample
    return latents
