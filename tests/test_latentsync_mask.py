"""The fixed LatentSync 1.5 mask embedded in the package reconstructs the official mask.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_latentsync import reference  # noqa: F401 (fixtures)

from pipeline.generators.latentsync.mask import keep_mask, latent_mask, mask_image


def test_mask_equals_the_reference_rows(reference: Path) -> None:
    data = json.loads((reference / "mask_rows.json").read_text())
    expected = np.full(data["size"], 255, dtype=np.uint8)
    for y, spans in enumerate(data["rows"]):
        for x_first, x_last in spans:
            expected[y, x_first:x_last + 1] = 0
    image = mask_image()
    assert image.dtype == np.uint8 and image.shape == (256, 256)
    assert np.array_equal(image, expected)


def test_mask_forms() -> None:
    keep = keep_mask()
    assert keep.shape == (1, 256, 256)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    assert keep[0, 200, 128] == 0 and keep[0, 40, 128] == 1  # mouth redrawn, eyes kept
    small = latent_mask((32, 32))
    assert small.shape == (1, 1, 32, 32)
    assert small[0, 0, 25, 16] == 0 and small[0, 0, 5, 16] == 1
    assert small.mean().item() == pytest.approx(keep.mean().item(), abs=0.02)
