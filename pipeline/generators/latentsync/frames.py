"""Moving the frame axis of video tensors between the batch and its own dimension.

The UNet keeps video as (B, C, F, H, W); its 2-D layers (convolutions, spatial attention,
per-frame group norms) see every frame as one image of a (B * F) batch.
"""

from __future__ import annotations

import torch


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B * F, C, H, W), frame-major within each batch item."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (B * F, C, H, W)


def batch_to_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B * F, C, H, W) -> (B, C, F, H, W); the inverse of :func:`frames_to_batch`."""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, F, H, W)
