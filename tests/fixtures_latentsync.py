"""Fixtures of the LatentSync tests: the official reference data (../shared/reference/latentsync15
or $LIPSYNC_TEST_REFERENCE) and the small random UNet saved there in the published format.

Import the fixtures a test module uses from here (``from fixtures_latentsync import reference``).
``weights_dir`` is a LatentSync folder of small random models in the published layouts (the
small UNet with its config beside it, the random whisper as ``whisper/tiny.pt``, a tiny random
VAE) named by ``$LIPSYNC_LATENTSYNC_DIR``: their outputs are noise, never a measure of quality.
``sd_vae`` is a random VAE of the published ``stabilityai/sd-vae-ft-mse`` shapes (335 MB, made
once per session), for the loader's built-in config.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.weights import LATENTSYNC_DIR_ENV
from required import shared_folder

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ENV = "LIPSYNC_TEST_REFERENCE"
TOLERANCE = 1e-4  # max abs difference allowed against the official outputs (fp32, CPU)


@pytest.fixture(scope="session")
def reference() -> Path:
    """The LatentSync 1.5 reference folder; skips where absent."""
    return shared_folder(REFERENCE_ENV, ROOT.parent / "shared" / "reference" / "latentsync15", "unet_small.pt",
                         "LatentSync reference data")


@pytest.fixture(scope="session")
def small_unet(reference: Path) -> torch.nn.Module:
    """The small random UNet (``unet_small.pt`` + ``unet_small_config.json``), fp32 on the CPU."""
    from pipeline.generators.latentsync import load_unet

    return load_unet(reference / "unet_small_config.json", reference / "unet_small.pt")


def tiny_vae(folder: Path) -> None:
    """A small random diffusers AutoencoderKL (4 blocks: the published VAE's x8 downscale) saved
    with ``save_pretrained`` into ``folder``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=8, sample_size=256).save_pretrained(folder)


SD_VAE_PARAMETERS = 83_653_863  # stabilityai/sd-vae-ft-mse


def published_vae(folder: Path) -> None:
    """A random diffusers AutoencoderKL of the published sd-vae-ft-mse's shapes (the values of its
    config.json, written out here apart from the loader's built-in config) saved with
    ``save_pretrained`` into ``folder``: config.json + diffusion_pytorch_model.safetensors."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                  layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256).save_pretrained(folder)


@pytest.fixture(scope="session")
def sd_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding :func:`published_vae` (read-only: link its files elsewhere)."""
    folder = tmp_path_factory.mktemp("sd_vae")
    published_vae(folder)
    return folder


@pytest.fixture(scope="module")
def weights_dir(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A LatentSync folder in the published layout, named by $LIPSYNC_LATENTSYNC_DIR."""
    root = tmp_path_factory.mktemp("latentsync")
    (root / "latentsync_unet.pt").symlink_to(reference / "unet_small.pt")
    shutil.copy(reference / "unet_small_config.json", root / "unet_config.json")
    (root / "whisper").mkdir()
    (root / "whisper" / "tiny.pt").symlink_to(reference / "whisper_tiny_random.pt")
    tiny_vae(root / "vae")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LATENTSYNC_DIR_ENV, str(root))
        mp.setenv("LIPSYNC_LATENTSYNC_STEPS", "1")  # the random models on 2 CPUs: one DDIM step
        yield root


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()
