"""The fixed mouth mask of LatentSync 1.5 on the 256 x 256 aligned face, and its forms the
sampler uses: the image (0 = redrawn, 255 = kept), the keep-mask in [0, 1] that blanks the mouth
of the face fed to the VAE, and the same mask resized to the latent grid for the UNet's input.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .mask_data import MASK_ROW_RUNS

FACE_SIZE = 256  # pixels per side of the aligned face (LatentSync 1.5), which the mask covers
MASKED = 0  # pixel value of the region the model redraws
KEPT = 255  # pixel value of everything else


@functools.cache
def _mask_image() -> np.ndarray:
    image = np.full((FACE_SIZE, FACE_SIZE), KEPT, dtype=np.uint8)
    for first_row, last_row, spans in MASK_ROW_RUNS:
        for x_first, x_last in spans:
            image[first_row:last_row + 1, x_first:x_last + 1] = MASKED
    image.flags.writeable = False
    return image


def mask_image() -> np.ndarray:
    """The official ``mask.png`` as uint8 (256, 256): 0 where the mouth is redrawn, 255 elsewhere."""
    return _mask_image().copy()


def keep_mask(*, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(1, 256, 256): 1 where the face is kept, 0 where it is redrawn (the official ``mask_image / 255``)."""
    return torch.from_numpy(_mask_image() / float(KEPT)).to(device=device, dtype=dtype)[None]


def latent_mask(size: tuple[int, int], *, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The keep-mask resized to the latent grid (nearest, as the official pipeline does): (1, 1, h, w)."""
    return F.interpolate(keep_mask(device=device, dtype=dtype)[None], size=size, mode="nearest")
