"""LatentSync on aligned faces: 256 x 256 faces and their audio tokens in, faces with a redrawn
mouth out. Tensors only; face alignment, warping back and video I/O live elsewhere.

Randomness, all from one CPU generator seeded with ``options.seed`` (so a seed gives the same
noise on every device), is drawn in this order: the initial noise frame, then the VAE's latent
samples of the mouth-blanked faces, then of the whole faces.
"""

from __future__ import annotations

import logging

import torch

from .mask import FACE_SIZE, keep_mask, latent_mask
from .sampling import SamplingOptions, UNetFn, denoise, initial_noise, make_scheduler
from .vae import DOWNSCALE, FaceVae

log = logging.getLogger(__name__)


def lipsync_faces(unet: UNetFn, vae: FaceVae, faces: torch.Tensor, tokens: torch.Tensor, *,
                  options: SamplingOptions = SamplingOptions()) -> torch.Tensor:
    """faces (F, 3, 256, 256) in [-1, 1], tokens (F, 50, 384) -> (F, 3, 256, 256) float32 in [-1, 1]:
    the generated pixels inside the mask, the input faces outside it."""
    frames, _, height, width = faces.shape
    if (height, width) != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"faces must be {FACE_SIZE} x {FACE_SIZE}, got {height} x {width}")
    if tokens.shape[0] != frames:
        raise ValueError(f"{frames} faces but {tokens.shape[0]} frames of audio tokens")
    faces = faces.float().cpu()
    generator = torch.Generator(device="cpu").manual_seed(options.seed)
    size = (height // DOWNSCALE, width // DOWNSCALE)  # (32, 32)
    noise = initial_noise(frames, size, generator=generator, sigma=make_scheduler(options.steps).init_noise_sigma)
    keep = keep_mask()  # (1, 256, 256)
    masked_latents = vae.encode(faces * keep, generator=generator).cpu()  # (F, 4, 32, 32)
    ref_latents = vae.encode(faces, generator=generator).cpu()  # (F, 4, 32, 32)
    device = vae.device
    latents = denoise(unet, noise=noise, mask=latent_mask(size), masked_latents=masked_latents,
                      ref_latents=ref_latents, audio=tokens.to(device), options=options)  # (F, 4, 32, 32)
    decoded = vae.decode(latents).cpu()  # (F, 3, 256, 256)
    return decoded * (1 - keep) + faces * keep
