"""The LatentSync UNet: our own module with the official ``UNet3DConditionModel``'s state-dict
layout (1,246 keys for 1.5), and :func:`load_unet`, which loads a published
``latentsync_unet.pt`` (``{"state_dict", "global_step"}``) strictly.

Called as ``unet(sample, timestep, encoder_hidden_states)``: sample (B, 13, F, h, w), timestep a
number or a 0-d / (B,) tensor, audio tokens (B, F, 50, 384); returns the predicted noise
(B, 4, F, h, w). F is at most the motion modules' position-encoding length (24).
"""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_strict, read_checkpoint
from .config import UNetConfig, config_for_checkpoint, load_config
from .unet_blocks import DownBlock, InflatedConv, MidBlock, UpBlock

log = logging.getLogger(__name__)

MAX_PERIOD = 10000  # the timestep sinusoids' longest period
CHECKPOINT_KEYS = ("state_dict",)  # "global_step" is informative only


def timestep_embedding(timesteps: torch.Tensor, dim: int, *, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal timestep features (B,) -> (B, dim), as diffusers' ``Timesteps`` computes them."""
    half = dim // 2
    exponent = -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # (half,)
    args = timesteps[:, None].float() * freqs[None, :]  # (B, half)
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)  # (B, 2 * half)
    return F.pad(emb, (0, dim % 2))  # (B, dim)


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 on the sinusoidal features."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class LatentSyncUNet(nn.Module):
    """UNet3DConditionModel-compatible denoiser of LatentSync (audio cross-attention, motion modules)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        ch = cfg.block_out_channels
        n = len(ch)
        self.conv_in = InflatedConv(cfg.in_channels, ch[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], cfg.time_embed_dim)
        self.down_blocks = nn.ModuleList([
            DownBlock(ch[max(i - 1, 0)], ch[i], cfg=cfg, heads=cfg.attention_heads[i],
                      cross=cfg.down_cross_attention[i], motion=cfg.motion_down[i], downsample=i < n - 1)
            for i in range(n)
        ])
        rev, rev_heads = ch[::-1], cfg.attention_heads[::-1]
        self.up_blocks = nn.ModuleList([
            UpBlock(rev[max(i - 1, 0)], rev[i], rev[min(i + 1, n - 1)], cfg=cfg, heads=rev_heads[i],
                    cross=cfg.up_cross_attention[i], motion=cfg.motion_up[i], upsample=i < n - 1)
            for i in range(n)
        ])
        # registered after up_blocks, as the official model does: its state-dict order
        self.mid_block = MidBlock(ch[-1], cfg=cfg, heads=cfg.attention_heads[-1])
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = InflatedConv(ch[0], cfg.out_channels, kernel_size=3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def _time(self, timestep: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)  # (B,)
        feats = timestep_embedding(t, self.config.block_out_channels[0], flip_sin_to_cos=self.config.flip_sin_to_cos,
                                   freq_shift=self.config.freq_shift)  # (B, C0), float32
        return self.time_embedding(feats.to(self.dtype))  # (B, time_embed_dim)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """sample (B, in_channels, F, h, w), audio (B, F, 50, 384) -> (B, out_channels, F, h, w)."""
        sample = sample.to(self.dtype)
        audio = None if encoder_hidden_states is None else encoder_hidden_states.to(self.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        temb = self._time(timestep, sample.shape[0], sample.device)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, audio)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, audio)
        for block in self.up_blocks:
            x = block(x, temb, audio, skips)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def build_unet(cfg: UNetConfig, *, device: torch.device | str = "meta") -> LatentSyncUNet:
    """An uninitialised UNet for ``cfg``; on the meta device (the default) it allocates nothing."""
    with torch.device(device):
        return LatentSyncUNet(cfg)


def load_unet(config_path: str | os.PathLike[str] | None, checkpoint_path: str | os.PathLike[str],
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> LatentSyncUNet:
    """The UNet of ``checkpoint_path`` (``{"state_dict", "global_step"}``), loaded strictly.

    ``config_path`` None: ``unet_config.json`` beside the checkpoint, else the built-in 1.5
    config. Raises WeightsUnavailable (no file) and WeightsInvalid (unreadable or truncated
    file; a missing, unexpected or wrongly shaped key, named with the file).
    """
    cfg = load_config(config_path) if config_path is not None else config_for_checkpoint(checkpoint_path)
    name = os.path.basename(os.fspath(checkpoint_path))
    ckpt = read_checkpoint(checkpoint_path, required=CHECKPOINT_KEYS)
    model = load_strict(build_unet(cfg), ckpt["state_dict"], source=name, device=device, dtype=dtype)
    log.info("latentsync: loaded UNet %s (global_step %s, %.1f M parameters, %s on %s)", name,
             ckpt.get("global_step", "?"), sum(p.numel() for p in model.parameters()) / 1e6, dtype, device)
    return model  # type: ignore[return-value]
