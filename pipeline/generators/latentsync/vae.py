"""The LatentSync VAE: diffusers' ``AutoencoderKL`` (``stabilityai/sd-vae-ft-mse`` for 1.5) from a
local diffusers folder, encoding and decoding faces in slices of frames.

Latents are ``(sample - SHIFT_FACTOR) * SCALING_FACTOR``, the values the official inference sets
on the VAE's config whatever the folder says. Encoding samples the latent distribution with the
caller's generator, as the official pipeline does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pipeline.errors import WeightsInvalid, WeightsUnavailable

log = logging.getLogger(__name__)

SCALING_FACTOR = 0.18215  # Stable Diffusion 1.x latents' scale
SHIFT_FACTOR = 0.0
DOWNSCALE = 8  # pixels per latent cell: 2 ** (4 blocks - 1); 256 x 256 faces -> 32 x 32 latents
SLICE_FRAMES = 8  # frames per VAE call; the memory of a 256 x 256 decode grows with it


class FaceVae:
    """Encode faces (F, 3, H, W) in [-1, 1] to scaled latents (F, 4, H/8, W/8) and back."""

    def __init__(self, vae: torch.nn.Module, *, slice_frames: int = SLICE_FRAMES) -> None:
        if slice_frames < 1:
            raise ValueError(f"slice_frames must be at least 1, got {slice_frames}")
        self.vae = vae
        self.slice_frames = slice_frames

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, *, generator: torch.Generator | None) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1] -> (F, 4, H/8, W/8) float32 latents, sampled with ``generator``."""
        out = []
        for part in pixels.split(self.slice_frames):
            dist = self.vae.encode(part.to(self.device, self.dtype)).latent_dist
            out.append(((dist.sample(generator=generator) - SHIFT_FACTOR) * SCALING_FACTOR).float())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(F, 4, h, w) scaled latents -> (F, 3, 8h, 8w) float32 pixels (about [-1, 1])."""
        out = []
        for part in latents.split(self.slice_frames):
            z = part.to(self.device, self.dtype) / SCALING_FACTOR + SHIFT_FACTOR
            out.append(self.vae.decode(z).sample.float())
        return torch.cat(out)


def load_vae(folder: str | os.PathLike[str], *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, slice_frames: int = SLICE_FRAMES) -> FaceVae:
    """An ``AutoencoderKL`` from a local diffusers folder (``config.json`` + weights), never the Hub.

    Raises WeightsUnavailable (no such folder or no config) and WeightsInvalid (the folder's
    files do not make an AutoencoderKL).
    """
    from diffusers import AutoencoderKL

    root = Path(folder)
    if not (root / "config.json").is_file():
        raise WeightsUnavailable(f"VAE: no diffusers folder with a config.json at {root}")
    try:
        vae = AutoencoderKL.from_pretrained(root, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise WeightsInvalid(f"VAE {root.name}: not a usable AutoencoderKL folder ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    vae.to(device).eval().requires_grad_(False)
    log.info("latentsync: VAE from %s (%s on %s)", root, dtype, device)
    return FaceVae(vae, slice_frames=slice_frames)
