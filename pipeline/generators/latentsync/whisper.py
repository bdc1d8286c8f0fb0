"""The whisper audio encoder, loaded from the published ``whisper/tiny.pt`` layout
(``{"dims": {...}, "model_state_dict": {...}}``, fp16). Only the ``encoder.*`` weights are
read, strictly; the text decoder, whatever its size, is ignored.

:meth:`WhisperEncoder.forward` returns what LatentSync takes as audio features: the input
embedding (convolutions + positions) and every block's output, before ``ln_post``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import WeightsInvalid

from .checkpoint import load_strict, read_checkpoint

log = logging.getLogger(__name__)

ENCODER_PREFIX = "encoder."
CHECKPOINT_KEYS = ("dims", "model_state_dict")
MLP_MULT = 4  # MLP inner width: 4 x n_audio_state


@dataclass(frozen=True)
class EncoderDims:
    """The audio half of whisper's ``ModelDimensions`` (tiny: 80 mels, 1500 positions, 384 wide, 6 heads, 4 layers)."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int


class SelfAttention(nn.Module):
    """whisper's ``MultiHeadAttention`` without cross-attention: ``key`` has no bias."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, T, C / heads)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.out(out.transpose(1, 2).reshape(b, t, c))  # (B, T, C)


class EncoderBlock(nn.Module):
    """Pre-norm self-attention and GELU MLP, each with a residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.attn_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width * MLP_MULT), nn.GELU(), nn.Linear(width * MLP_MULT, width))
        self.mlp_ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """whisper's ``AudioEncoder``; ``positional_embedding`` is the checkpoint's (saved) buffer."""

    def __init__(self, dims: EncoderDims) -> None:
        super().__init__()
        self.dims = dims
        width = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.empty(dims.n_audio_ctx, width))
        self.blocks = nn.ModuleList([EncoderBlock(width, dims.n_audio_head) for _ in range(dims.n_audio_layer)])
        self.ln_post = nn.LayerNorm(width)  # loaded for a strict match; LatentSync's features precede it

    @property
    def window_frames(self) -> int:
        """Mel frames per window: 2 per position (conv2 has stride 2): 3000 for 1500 positions."""
        return self.dims.n_audio_ctx * 2

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, 2 * n_audio_ctx) -> embeddings (B, n_audio_layer + 1, n_audio_ctx, width)."""
        mel = mel.to(self.conv1.weight.dtype)
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel))))  # (B, width, n_audio_ctx)
        x = x.transpose(1, 2) + self.positional_embedding  # (B, n_audio_ctx, width)
        layers = [x]
        for block in self.blocks:
            x = block(x)
            layers.append(x)
        return torch.stack(layers, dim=1)  # (B, n_audio_layer + 1, n_audio_ctx, width)


class _EncoderOnly(nn.Module):
    """Holds the encoder as ``encoder`` so its keys read as in the checkpoint (``encoder.conv1.weight``)."""

    def __init__(self, encoder: WhisperEncoder) -> None:
        super().__init__()
        self.encoder = encoder


def _dims(raw: object, source: str) -> EncoderDims:
    fields = EncoderDims.__dataclass_fields__
    if not isinstance(raw, dict) or any(k not in raw for k in fields):
        raise WeightsInvalid(f"{source}: 'dims' must hold {list(fields)}")
    try:
        return EncoderDims(**{k: int(raw[k]) for k in fields})
    except (TypeError, ValueError) as exc:
        raise WeightsInvalid(f"{source}: 'dims' has a non-integer value ({exc})") from exc


def load_whisper_encoder(checkpoint_path: str | os.PathLike[str], *, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> WhisperEncoder:
    """The encoder of a whisper checkpoint in the published layout, loaded strictly.

    The fp16 weights are computed in ``dtype`` (fp32 by default, as the official inference
    does on the CPU). Raises WeightsUnavailable (no file) and WeightsInvalid (unreadable file,
    bad dims, a missing, unexpected or wrongly shaped ``encoder.*`` key).
    """
    name = os.path.basename(os.fspath(checkpoint_path))
    ckpt = read_checkpoint(checkpoint_path, required=CHECKPOINT_KEYS)
    dims = _dims(ckpt["dims"], name)
    state = ckpt["model_state_dict"]
    if not isinstance(state, dict):
        raise WeightsInvalid(f"{name}: 'model_state_dict' is a {type(state).__name__}, not a dict")
    encoder_state = {k: v for k, v in state.items() if str(k).startswith(ENCODER_PREFIX)}
    with torch.device("meta"):
        holder = _EncoderOnly(WhisperEncoder(dims))
    load_strict(holder, encoder_state, source=name, device=device, dtype=dtype)
    encoder = holder.encoder
    log.info("latentsync: whisper encoder from %s (%d layers, width %d)", name, dims.n_audio_layer,
             dims.n_audio_state)
    return encoder
