"""The LatentSync UNet's configuration: the built-in 1.5 config and ``unet_config.json`` overrides.

The built-in config is the ``model:`` section of the official ``configs/unet/stage2.yaml``
(LatentSync 1.5), written out here so nothing outside the package is read at run time. A
``unet_config.json`` beside a checkpoint replaces it: its keys override the built-in ones,
so a file may hold only what differs (a small test UNet changes ``block_out_channels``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import WeightsInvalid

log = logging.getLogger(__name__)

CONFIG_FILENAME = "unet_config.json"  # looked for beside the checkpoint

LATENTSYNC15_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "add_audio_layer": True,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,  # whisper tiny's width
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 13,  # noisy latents 4 + mask 1 + masked-face latents 4 + reference latents 4
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "resnet_time_scale_shift": "default",
    "use_motion_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 24,
        "temporal_attention_dim_div": 1,
        "zero_initialize": True,
    },
}

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")
MID_BLOCK_TYPE = "UNetMidBlock3DCrossAttn"
TEMPORAL_SELF = "Temporal_Self"


@dataclass(frozen=True)
class MotionConfig:
    """The temporal (motion) modules: self-attention over the frames of each pixel."""

    num_attention_heads: int = 8
    num_transformer_block: int = 1
    attention_blocks: int = 2  # how many "Temporal_Self" attentions per transformer block
    position_encoding: bool = True
    max_frames: int = 24  # temporal_position_encoding_max_len: the most frames one call may hold
    attention_dim_div: int = 1


@dataclass(frozen=True)
class UNetConfig:
    """What builds a UNet3DConditionModel-compatible LatentSync UNet."""

    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    down_cross_attention: tuple[bool, ...]  # per down block: CrossAttnDownBlock3D or DownBlock3D
    up_cross_attention: tuple[bool, ...]  # per up block
    layers_per_block: int
    attention_heads: tuple[int, ...]  # per down block ("attention_head_dim" is a head count here)
    cross_attention_dim: int
    norm_num_groups: int
    norm_eps: float
    flip_sin_to_cos: bool
    freq_shift: int
    downsample_padding: int
    mid_block_scale_factor: float
    center_input_sample: bool
    add_audio_layer: bool
    motion_down: tuple[bool, ...]  # per down block: has motion modules
    motion_up: tuple[bool, ...]  # per up block
    motion_mid: bool
    motion: MotionConfig

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4  # 1280 for 1.5


def _invalid(source: str, what: str) -> WeightsInvalid:
    return WeightsInvalid(f"{source}: {what}")


def _motion_config(kwargs: Mapping[str, Any], source: str) -> MotionConfig:
    types = list(kwargs.get("attention_block_types", [TEMPORAL_SELF, TEMPORAL_SELF]))
    if any(t != TEMPORAL_SELF for t in types):
        raise _invalid(source, f"motion attention_block_types {types}: only {TEMPORAL_SELF!r} is supported")
    return MotionConfig(
        num_attention_heads=int(kwargs.get("num_attention_heads", 8)),
        num_transformer_block=int(kwargs.get("num_transformer_block", 2)),
        attention_blocks=len(types),
        position_encoding=bool(kwargs.get("temporal_position_encoding", False)),
        max_frames=int(kwargs.get("temporal_position_encoding_max_len", 24)),
        attention_dim_div=int(kwargs.get("temporal_attention_dim_div", 1)),
    )


def _check_supported(raw: Mapping[str, Any], source: str) -> None:
    checks = {
        "act_fn": ("silu", "swish"),
        "resnet_time_scale_shift": ("default",),
        "mid_block_type": (MID_BLOCK_TYPE,),
        "motion_module_type": ("Vanilla",),
        "use_linear_projection": (False,),
        "dual_cross_attention": (False,),
        "upcast_attention": (False,),
        "use_inflated_groupnorm": (False,),
        "only_cross_attention": (False,),
        "class_embed_type": (None,),
        "num_class_embeds": (None,),
    }
    for key, allowed in checks.items():
        if key in raw and raw[key] not in allowed:
            raise _invalid(source, f"{key}={raw[key]!r} is not supported (supported: {list(allowed)})")
    for key, kinds in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
        unknown = [t for t in raw[key] if t not in kinds]
        if unknown:
            raise _invalid(source, f"{key} {unknown}: supported are {list(kinds)}")


def config_from_dict(overrides: Mapping[str, Any] | None = None, *, source: str = "built-in") -> UNetConfig:
    """The built-in 1.5 config with ``overrides`` applied; WeightsInvalid names ``source``."""
    raw = {**LATENTSYNC15_CONFIG, **(overrides or {})}
    _check_supported(raw, source)
    try:
        channels = tuple(int(c) for c in raw["block_out_channels"])
        n = len(channels)
        if len(raw["down_block_types"]) != n or len(raw["up_block_types"]) != n:
            raise _invalid(source, f"{n} block_out_channels but {len(raw['down_block_types'])} down and "
                                   f"{len(raw['up_block_types'])} up block types")
        heads = raw["attention_head_dim"]
        heads = (int(heads),) * n if isinstance(heads, int) else tuple(int(h) for h in heads)
        motion = bool(raw["use_motion_module"])
        resolutions = {int(r) for r in raw["motion_module_resolutions"]}
        decoder_only = bool(raw["motion_module_decoder_only"])
        return UNetConfig(
            in_channels=int(raw["in_channels"]),
            out_channels=int(raw["out_channels"]),
            block_out_channels=channels,
            down_cross_attention=tuple(t.startswith("CrossAttn") for t in raw["down_block_types"]),
            up_cross_attention=tuple(t.startswith("CrossAttn") for t in raw["up_block_types"]),
            layers_per_block=int(raw["layers_per_block"]),
            attention_heads=heads,
            cross_attention_dim=int(raw["cross_attention_dim"]),
            norm_num_groups=int(raw["norm_num_groups"]),
            norm_eps=float(raw["norm_eps"]),
            flip_sin_to_cos=bool(raw["flip_sin_to_cos"]),
            freq_shift=int(raw["freq_shift"]),
            downsample_padding=int(raw["downsample_padding"]),
            mid_block_scale_factor=float(raw["mid_block_scale_factor"]),
            center_input_sample=bool(raw["center_input_sample"]),
            add_audio_layer=bool(raw["add_audio_layer"]),
            # resolution of down block i is 2**i, of up block i 2**(n - 1 - i)
            motion_down=tuple(motion and not decoder_only and 2**i in resolutions for i in range(n)),
            motion_up=tuple(motion and 2 ** (n - 1 - i) in resolutions for i in range(n)),
            motion_mid=motion and bool(raw["motion_module_mid_block"]),
            motion=_motion_config(raw.get("motion_module_kwargs") or {}, source),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _invalid(source, f"not a usable UNet config ({type(exc).__name__}: {exc})") from exc


def load_config(path: str | os.PathLike[str]) -> UNetConfig:
    """A UNet config from a JSON file (the official ``model:`` section, or only its changes)."""
    name = Path(path).name
    try:
        overrides = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise WeightsInvalid(f"{name}: cannot read the UNet config ({exc})") from exc
    except ValueError as exc:
        raise WeightsInvalid(f"{name}: not valid JSON ({exc})") from exc
    if not isinstance(overrides, dict):
        raise WeightsInvalid(f"{name}: a UNet config must be a JSON object")
    return config_from_dict(overrides, source=name)


def config_for_checkpoint(checkpoint_path: str | os.PathLike[str]) -> UNetConfig:
    """The config of a checkpoint: ``unet_config.json`` beside it where present, else built-in."""
    beside = Path(checkpoint_path).with_name(CONFIG_FILENAME)
    if beside.is_file():
        log.info("latentsync: UNet config from %s", beside)
        return load_config(beside)
    return config_from_dict()
