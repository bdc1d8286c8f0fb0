"""Temporal (motion) modules of the LatentSync UNet: self-attention across the frames of a
chunk at every pixel, with a sinusoidal frame-position encoding.

Names follow the official ``VanillaTemporalModule`` (``temporal_transformer.{norm, proj_in,
transformer_blocks.N.{attention_blocks.N.{to_q, to_k, to_v, to_out.0, pos_encoder.pe}, norms.N,
ff, ff_norm}, proj_out}``); ``pos_encoder.pe`` is a saved buffer, loaded from the checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import TRANSFORMER_NORM_EPS, Attention, FeedForward
from .config import MotionConfig
from .frames import batch_to_frames, frames_to_batch

POSITION_BASE = 10000.0  # the sinusoid's longest wavelength, as in "Attention is all you need"


class PositionalEncoding(nn.Module):
    """Adds ``pe[:, :F]`` (1, max_frames, C) to (N, F, C) sequences."""

    def __init__(self, dim: int, max_frames: int) -> None:
        super().__init__()
        position = torch.arange(max_frames, dtype=torch.float32)[:, None]  # (max_frames, 1)
        inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(POSITION_BASE) / dim))
        pe = torch.zeros(1, max_frames, dim)
        pe[0, :, 0::2] = torch.sin(position * inv_freq)
        pe[0, :, 1::2] = torch.cos(position * inv_freq)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(f"the UNet takes at most {self.pe.shape[1]} frames per call, got {frames}")
        return x + self.pe[:, :frames]


class TemporalAttention(Attention):
    """Self-attention over the F frames of each of the S pixels of (B * F, S, C) input."""

    def __init__(self, dim: int, *, heads: int, head_dim: int, max_frames: int, position_encoding: bool) -> None:
        super().__init__(dim, heads=heads, head_dim=head_dim)
        self.pos_encoder = PositionalEncoding(dim, max_frames) if position_encoding else None

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:  # type: ignore[override]
        bf, s, c = x.shape
        seq = x.reshape(bf // frames, frames, s, c).transpose(1, 2).reshape(-1, frames, c)  # (B * S, F, C)
        if self.pos_encoder is not None:
            seq = self.pos_encoder(seq)
        out = super().forward(seq)  # (B * S, F, C)
        return out.reshape(bf // frames, s, frames, c).transpose(1, 2).reshape(bf, s, c)  # (B * F, S, C)


class TemporalTransformerBlock(nn.Module):
    """Pre-norm temporal self-attentions, then a GEGLU feed-forward, each with a residual."""

    def __init__(self, dim: int, *, heads: int, head_dim: int, motion: MotionConfig) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList([
            TemporalAttention(dim, heads=heads, head_dim=head_dim, max_frames=motion.max_frames,
                              position_encoding=motion.position_encoding)
            for _ in range(motion.attention_blocks)
        ])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(motion.attention_blocks)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """Per-frame GroupNorm, linear projections in and out, temporal blocks, a residual."""

    def __init__(self, channels: int, *, groups: int, motion: MotionConfig) -> None:
        super().__init__()
        heads = motion.num_attention_heads
        head_dim = channels // heads // motion.attention_dim_div
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([
            TemporalTransformerBlock(inner, heads=heads, head_dim=head_dim, motion=motion)
            for _ in range(motion.num_transformer_block)
        ])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, F, H, W) -> (B, C, F, H, W)."""
        b, c, f, h, w = x.shape
        residual = frames_to_batch(x)  # (B * F, C, H, W)
        y = self.norm(residual).permute(0, 2, 3, 1).reshape(b * f, h * w, c)  # (B * F, H * W, C)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, f)
        y = self.proj_out(y).reshape(b * f, h, w, c).permute(0, 3, 1, 2)  # (B * F, C, H, W)
        return batch_to_frames(y + residual, f)


class MotionModule(nn.Module):
    """The official ``VanillaTemporalModule``: a wrapper naming its transformer ``temporal_transformer``."""

    def __init__(self, channels: int, *, groups: int, motion: MotionConfig) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, groups=groups, motion=motion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_transformer(x)
