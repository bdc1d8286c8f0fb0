"""Spatial attention of the LatentSync UNet: per-frame self-attention over the pixels and
cross-attention from the pixels to that frame's 50 audio tokens.

Module and parameter names follow the official ``Transformer3DModel`` (``norm``, ``proj_in``,
``transformer_blocks.N.{norm1, attn1, norm2, attn2, ff, norm3}``, ``proj_out``) so that its
state dict loads unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .frames import batch_to_frames, frames_to_batch

TRANSFORMER_NORM_EPS = 1e-6  # the transformers' GroupNorm eps (the resnets use the config's 1e-5)
FF_MULT = 4  # feed-forward inner width: 4 x the channels (GEGLU projects to twice that)


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections and a biased output projection."""

    def __init__(self, query_dim: int, *, heads: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Identity()])  # [1]: the dropout slot

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        return x.reshape(n, s, self.heads, d // self.heads).transpose(1, 2)  # (N, heads, S, d / heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, S, query_dim), context (N, T, context_dim) or None for self-attention."""
        context = x if context is None else context
        out = F.scaled_dot_product_attention(self._split(self.to_q(x)), self._split(self.to_k(context)),
                                             self._split(self.to_v(context)))  # (N, heads, S, head_dim)
        n, h, s, d = out.shape
        out = out.transpose(1, 2).reshape(n, s, h * d)  # (N, S, inner)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """A linear projection to twice the width, one half gated by the exact GELU of the other."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward: ``net.0`` (GEGLU), ``net.1`` (dropout slot), ``net.2`` (output)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        inner = dim * FF_MULT
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class SpatialTransformerBlock(nn.Module):
    """Pre-norm self-attention, audio cross-attention (when the UNet has audio layers), feed-forward."""

    def __init__(self, dim: int, *, heads: int, head_dim: int, context_dim: int, audio: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, head_dim=head_dim)
        if audio:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads=heads, head_dim=head_dim, context_dim=context_dim)
        else:
            self.norm2 = self.attn2 = None
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """x (B * F, H * W, C), context (B * F, 50, 384) or None."""
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and context is not None:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame attention block of the official ``Transformer3DModel`` (1x1 conv projections)."""

    def __init__(self, channels: int, *, heads: int, context_dim: int, groups: int, audio: bool) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([
            SpatialTransformerBlock(channels, heads=heads, head_dim=channels // heads, context_dim=context_dim,
                                    audio=audio)
        ])
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        """x (B, C, F, H, W); audio (B, F, 50, 384) or None. Returns (B, C, F, H, W)."""
        b, c, f, h, w = x.shape
        residual = frames_to_batch(x)  # (B * F, C, H, W)
        y = self.proj_in(self.norm(residual))
        y = y.permute(0, 2, 3, 1).reshape(b * f, h * w, c)  # (B * F, H * W, C)
        context = None if audio is None else audio.reshape(b * f, *audio.shape[2:])  # (B * F, 50, 384)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = y.reshape(b * f, h, w, c).permute(0, 3, 1, 2)  # (B * F, C, H, W)
        return batch_to_frames(self.proj_out(y) + residual, f)
