"""Fixtures of the LatentSync tests: the official reference data (../shared/reference/latentsync15
or $LIPSYNC_TEST_REFERENCE) and the small random UNet saved there in the published format.

Import the fixtures a test module uses from here (``from fixtures_latentsync import reference``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ENV = "LIPSYNC_TEST_REFERENCE"
TOLERANCE = 1e-4  # max abs difference allowed against the official outputs (fp32, CPU)


def reference_dir() -> Path:
    return Path(os.environ.get(REFERENCE_ENV, ROOT.parent / "shared" / "reference" / "latentsync15"))


@pytest.fixture(scope="session")
def reference() -> Path:
    """The LatentSync 1.5 reference folder; skips where absent."""
    d = reference_dir()
    if not (d / "unet_small.pt").is_file():
        pytest.skip(f"LatentSync reference data not found at {d} (set {REFERENCE_ENV})")
    return d


@pytest.fixture(scope="session")
def small_unet(reference: Path) -> torch.nn.Module:
    """The small random UNet (``unet_small.pt`` + ``unet_small_config.json``), fp32 on the CPU."""
    from pipeline.generators.latentsync import load_unet

    return load_unet(reference / "unet_small_config.json", reference / "unet_small.pt")


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()
