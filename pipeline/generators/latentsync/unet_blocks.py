"""Building blocks of the LatentSync UNet: inflated convolutions, resnets, down/up samplers and
the down, mid and up blocks that combine them with spatial attention and motion modules.

"Inflated" 2-D layers run every frame as an image; the resnets' GroupNorms are plain
``nn.GroupNorm`` on (B, C, F, H, W), so their statistics span all frames of a chunk, as in the
official UNet (``use_inflated_groupnorm`` false). Names follow the official ``unet_blocks.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SpatialTransformer
from .config import UNetConfig
from .frames import batch_to_frames, frames_to_batch
from .motion import MotionModule


class InflatedConv(nn.Conv2d):
    """A 2-D convolution applied to every frame of (B, C, F, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return batch_to_frames(super().forward(frames_to_batch(x)), x.shape[2])


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added between, a (1x1 conv) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, cfg: UNetConfig, scale: float = 1.0) -> None:
        super().__init__()
        groups, eps = cfg.norm_num_groups, cfg.norm_eps
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = InflatedConv(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(cfg.time_embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = InflatedConv(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (InflatedConv(in_channels, out_channels, kernel_size=1)
                              if in_channels != out_channels else None)
        self.output_scale_factor = scale

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, F, H, W), temb (B, time_embed_dim) -> (B, C_out, F, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]  # (B, C_out, 1, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (shortcut + h) / self.output_scale_factor


class Downsample(nn.Module):
    """A stride-2 3x3 convolution per frame."""

    def __init__(self, channels: int, *, padding: int) -> None:
        super().__init__()
        self.conv = InflatedConv(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling of every frame (to the skip's size), then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = InflatedConv(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=(x.shape[2], *size), mode="nearest")  # (B, C, F, 2H, 2W)
        return self.conv(x)


class _Layers(nn.Module):
    """resnets[i] -> attentions[i] (cross-attention blocks only) -> motion_modules[i] (where enabled)."""

    def _build_layers(self, in_channels: list[int], out_channels: int, *, cfg: UNetConfig, heads: int,
                      cross: bool, motion: bool) -> None:
        self.attentions = nn.ModuleList([
            SpatialTransformer(out_channels, heads=heads, context_dim=cfg.cross_attention_dim,
                               groups=cfg.norm_num_groups, audio=cfg.add_audio_layer)
            for _ in in_channels
        ]) if cross else None
        self.resnets = nn.ModuleList([ResnetBlock(c, out_channels, cfg=cfg) for c in in_channels])
        self.motion_modules = nn.ModuleList([
            MotionModule(out_channels, groups=cfg.norm_num_groups, motion=cfg.motion) for _ in in_channels
        ]) if motion else None

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        x = self.resnets[i](x, temb)
        if self.attentions is not None:
            x = self.attentions[i](x, audio)
        if self.motion_modules is not None:
            x = self.motion_modules[i](x)
        return x


class DownBlock(_Layers):
    """CrossAttnDownBlock3D (``cross``) or DownBlock3D; returns the output and its skips."""

    def __init__(self, in_channels: int, out_channels: int, *, cfg: UNetConfig, heads: int, cross: bool,
                 motion: bool, downsample: bool) -> None:
        super().__init__()
        ins = [in_channels] + [out_channels] * (cfg.layers_per_block - 1)
        self._build_layers(ins, out_channels, cfg=cfg, heads=heads, cross=cross, motion=motion)
        self.downsamplers = (nn.ModuleList([Downsample(out_channels, padding=cfg.downsample_padding)])
                             if downsample else None)

    def forward(self, x: torch.Tensor, temb: torch.Tensor,
                audio: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, audio)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(_Layers):
    """CrossAttnUpBlock3D (``cross``) or UpBlock3D: each resnet takes the next skip concatenated."""

    def __init__(self, prev_channels: int, out_channels: int, skip_in_channels: int, *, cfg: UNetConfig,
                 heads: int, cross: bool, motion: bool, upsample: bool) -> None:
        super().__init__()
        layers = cfg.layers_per_block + 1
        ins = [(prev_channels if j == 0 else out_channels) + (skip_in_channels if j == layers - 1 else out_channels)
               for j in range(layers)]
        self._build_layers(ins, out_channels, cfg=cfg, heads=heads, cross=cross, motion=motion)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor | None,
                skips: list[torch.Tensor]) -> torch.Tensor:
        """``skips`` are consumed from the end; the upsampler matches the next remaining skip's
        (H, W), which is 2x except where a downsampling rounded an odd size up."""
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips.pop()], dim=1)  # (B, C + C_skip, F, H, W)
            x = self._layer(i, x, temb, audio)
        if self.upsamplers is not None:
            size = tuple(skips[-1].shape[3:]) if skips else (x.shape[3] * 2, x.shape[4] * 2)
            x = self.upsamplers[0](x, size)
        return x


class MidBlock(nn.Module):
    """UNetMidBlock3DCrossAttn: resnet, then (attention, motion module if enabled, resnet)."""

    def __init__(self, channels: int, *, cfg: UNetConfig, heads: int) -> None:
        super().__init__()
        scale = cfg.mid_block_scale_factor
        self.attentions = nn.ModuleList([
            SpatialTransformer(channels, heads=heads, context_dim=cfg.cross_attention_dim,
                               groups=cfg.norm_num_groups, audio=cfg.add_audio_layer)
        ])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, cfg=cfg, scale=scale) for _ in range(2)])
        self.motion_modules = (nn.ModuleList([MotionModule(channels, groups=cfg.norm_num_groups, motion=cfg.motion)])
                               if cfg.motion_mid else None)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, audio)
        if self.motion_modules is not None:
            x = self.motion_modules[0](x)
        return self.resnets[1](x, temb)
