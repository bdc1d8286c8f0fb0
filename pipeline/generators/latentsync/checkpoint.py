"""Reading published checkpoints and loading them strictly: every key the model has must be in
the file with its exact shape, and nothing else; a mismatch names the file and the key.

(The official LatentSync loader uses ``strict=False``, which silently drops such keys.)
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import WeightsInvalid, WeightsUnavailable

log = logging.getLogger(__name__)

KEYS_NAMED = 5  # keys quoted in a mismatch message before "... and N more"


def read_checkpoint(path: str | os.PathLike[str], *, required: tuple[str, ...]) -> dict[str, Any]:
    """The dict saved in ``path`` (on the CPU, tensors only), which must hold ``required`` keys.

    Raises WeightsUnavailable (no such file) and WeightsInvalid (unreadable, truncated,
    not a dict, a required key absent).
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsUnavailable(f"{p.name}: no checkpoint file at {p}")
    try:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # a legacy (non-zip) file cannot be mapped; anything else is fatal
                raise
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise WeightsInvalid(f"{p.name}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(ckpt, dict):
        raise WeightsInvalid(f"{p.name}: expected a dict with keys {list(required)}, found {type(ckpt).__name__}")
    absent = [k for k in required if k not in ckpt]
    if absent:
        found = sorted(map(str, ckpt))[:KEYS_NAMED]
        raise WeightsInvalid(f"{p.name}: has no {absent[0]!r} entry (keys found: {found})")
    return ckpt


def named_keys(keys: list[str]) -> str:
    """The first :data:`KEYS_NAMED` keys quoted, then "and N more"."""
    shown = ", ".join(repr(k) for k in keys[:KEYS_NAMED])
    return shown + (f" and {len(keys) - KEYS_NAMED} more" if len(keys) > KEYS_NAMED else "")


def check_state_dict(expected: Mapping[str, torch.Size], state_dict: Any, *, source: str) -> None:
    """WeightsInvalid naming ``source`` and the key(s) unless ``state_dict`` has exactly the
    ``expected`` keys, each a tensor of the expected shape."""
    if not isinstance(state_dict, Mapping):
        raise WeightsInvalid(f"{source}: the state dict is a {type(state_dict).__name__}, not a mapping")
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise WeightsInvalid(f"{source}: missing key {named_keys(missing)} ({len(missing)} missing)")
    unexpected = [str(k) for k in state_dict if k not in expected]
    if unexpected:
        raise WeightsInvalid(f"{source}: unexpected key {named_keys(unexpected)} ({len(unexpected)} unexpected)")
    for key, shape in expected.items():
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise WeightsInvalid(f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor")
        if value.shape != shape:
            raise WeightsInvalid(f"{source}: key {key!r} has shape {list(value.shape)}, "
                                 f"the model expects {list(shape)}")
        if not value.is_floating_point():
            raise WeightsInvalid(f"{source}: key {key!r} has dtype {value.dtype}, expected a floating-point tensor")


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str,
                device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """Fill ``model`` (built on the meta device) from ``state_dict`` after :func:`check_state_dict`;
    returns it on ``device`` in ``dtype``, in eval mode, without gradients."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state_dict(expected, state_dict, source=source)
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
