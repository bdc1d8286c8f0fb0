"""The LatentSync VAE's config: the ``config.json`` beside its weights, else the published
``stabilityai/sd-vae-ft-mse`` config built in.

The weights may be found where no config lies beside them (the models folder, a Hub cache
holding only the weights file, an explicit path): the built-in config, the values of that
model's published ``config.json``, makes an ``AutoencoderKL`` of its shapes. A folder's own
``config.json`` always wins (a small test VAE, another fine-tune).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # the file diffusers reads from a folder
BUILTIN_REPO = "stabilityai/sd-vae-ft-mse"
BUILTIN_SOURCE = f"built-in {BUILTIN_REPO} config (no {CONFIG_NAME} beside the weights)"

SD_VAE_FT_MSE_CONFIG: dict[str, Any] = {  # its config.json (diffusers 0.4.2): 83,653,863 parameters
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],  # 4 blocks: x8 downscale, 256 x 256 faces -> 32 x 32 latents
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


@dataclass(frozen=True)
class VaeFiles:
    """What :func:`pipeline.generators.latentsync.vae.load_vae` reads: the weights file and the
    config beside it, or None for the built-in one."""

    weights: Path
    config: Path | None

    @property
    def config_source(self) -> str:
        """The config.json used (absolute path), or :data:`BUILTIN_SOURCE`."""
        return str(self.config.absolute()) if self.config is not None else BUILTIN_SOURCE

    @property
    def diffusers_folder(self) -> bool:
        """Whether the weights' folder reads as it is: its own config and the weights under
        the name diffusers looks for."""
        return self.config is not None and self.weights.name == WEIGHTS_NAME


def vae_files(where: str | os.PathLike[str]) -> VaeFiles:
    """The VAE's files for ``where``, a diffusers folder or its weights file (which need not exist)."""
    path = Path(where)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    config = weights.parent / CONFIG_NAME
    return VaeFiles(weights=weights, config=config if config.is_file() else None)
