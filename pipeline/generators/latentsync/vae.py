"""The LatentSync VAE: diffusers' ``AutoencoderKL`` (``stabilityai/sd-vae-ft-mse`` for 1.5) from a
local diffusers folder or its weights file, encoding and decoding faces in slices of frames.

The config is the ``config.json`` beside the weights, else the built-in sd-vae-ft-mse config
(:mod:`.vae_config`). The weights load strictly: a missing, unexpected or wrongly shaped key is
refused (diffusers would initialise a missing one at random and only warn).

Latents are ``(sample - SHIFT_FACTOR) * SCALING_FACTOR``, the values the official inference sets
on the VAE's config whatever the folder says. Encoding samples the latent distribution with the
caller's generator, as the official pipeline does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from pipeline.errors import WeightsInvalid, WeightsUnavailable

from .checkpoint import named_keys
from .vae_config import CONFIG_NAME, SD_VAE_FT_MSE_CONFIG, WEIGHTS_NAME, VaeFiles, vae_files

log = logging.getLogger(__name__)

SCALING_FACTOR = 0.18215  # Stable Diffusion 1.x latents' scale
SHIFT_FACTOR = 0.0
DOWNSCALE = 8  # pixels per latent cell: 2 ** (4 blocks - 1); 256 x 256 faces -> 32 x 32 latents
SLICE_FRAMES = 8  # frames per VAE call; the memory of a 256 x 256 decode grows with it


class FaceVae:
    """Encode faces (F, 3, H, W) in [-1, 1] to scaled latents (F, 4, H/8, W/8) and back."""

    def __init__(self, vae: torch.nn.Module, *, slice_frames: int = SLICE_FRAMES, config_source: str = "") -> None:
        if slice_frames < 1:
            raise ValueError(f"slice_frames must be at least 1, got {slice_frames}")
        self.vae = vae
        self.slice_frames = slice_frames
        self.config_source = config_source  # the config.json used, or the built-in config (.vae_config)

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


@contextmanager
def _as_diffusers_folder(files: VaeFiles) -> Iterator[Path]:
    """A folder diffusers reads as it is: the weights' own folder, else a temporary one holding
    the config (the folder's own or the built-in one) and a link to the weights."""
    if files.diffusers_folder:
        yield files.weights.parent
        return
    with tempfile.TemporaryDirectory(prefix="lipsync-vae-") as tmp:
        folder = Path(tmp)
        config = (json.loads(files.config.read_text()) if files.config is not None  # bad JSON: WeightsInvalid
                  else SD_VAE_FT_MSE_CONFIG)
        (folder / CONFIG_NAME).write_text(json.dumps(config))
        try:
            (folder / WEIGHTS_NAME).symlink_to(files.weights.resolve())
        except OSError:  # no symlinks here: a copy
            shutil.copyfile(files.weights, folder / WEIGHTS_NAME)
        yield folder


def load_vae(where: str | os.PathLike[str], *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, slice_frames: int = SLICE_FRAMES) -> FaceVae:
    """An ``AutoencoderKL`` from a local diffusers folder or its weights file, never the Hub; the
    config is the ``config.json`` beside the weights, else the built-in sd-vae-ft-mse one.

    Raises WeightsUnavailable (no such folder or weights file) and WeightsInvalid (the files do not
    make an AutoencoderKL: unreadable, a key missing, unexpected or of another shape).
    """
    from diffusers import AutoencoderKL

    files = vae_files(where)
    if not files.diffusers_folder and not files.weights.is_file():
        raise WeightsUnavailable(f"VAE: no diffusers folder ({CONFIG_NAME} + {WEIGHTS_NAME}) nor weights file "
                                 f"at {Path(where)}")
    what = f"VAE {files.weights.name} with {files.config_source}"
    try:
        with _as_diffusers_folder(files) as folder:
            vae, info = AutoencoderKL.from_pretrained(folder, local_files_only=True, torch_dtype=dtype,
                                                      output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]  # torch: a heading, then the keys
        raise WeightsInvalid(f"{what}: not a usable AutoencoderKL ({type(exc).__name__}: "
                             f"{' '.join(lines[:2])})") from exc
    for kind in ("missing", "unexpected", "mismatched"):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(f"{kind}_keys") or ())
        if keys:
            raise WeightsInvalid(f"{what}: not a usable AutoencoderKL ({kind} key {named_keys(keys)})")
    vae.to(device).eval().requires_grad_(False)
    log.info("latentsync: VAE from %s, config %s (%s on %s)", files.weights, files.config_source, dtype, device)
    return FaceVae(vae, slice_frames=slice_frames, config_source=files.config_source)
