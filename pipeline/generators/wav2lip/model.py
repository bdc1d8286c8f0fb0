"""The Wav2Lip generator network and a strict loader for its published checkpoints.

The layer layout (and so every state_dict key) is that of Rudrabha/Wav2Lip's
``models/wav2lip.py``, so ``wav2lip.pth`` and ``wav2lip_gan.pth`` load unchanged:

- face encoder: 7 stages, 96x96x6 -> 1x1x512, each stage's output kept as a skip
- audio encoder: one flat Sequential, 80x16 mel -> 1x1x512
- face decoder: 7 stages, each followed by concatenation with the matching skip
- output block: conv + 1x1 conv to 3 channels + sigmoid, in [0, 1]

Every conv block is conv -> BatchNorm -> (+ input if residual) -> ReLU; the keys are
``<stage>.<i>.conv_block.0.weight`` (conv) and ``<stage>.<i>.conv_block.1.*`` (BatchNorm).

:func:`load_wav2lip` accepts ``{"state_dict": {...}}`` (the published format, extra
top-level entries such as the optimizer state are ignored) or a bare state_dict, with or
without DataParallel's ``module.`` prefix, always with ``weights_only=True``. Anything
that does not match the network exactly raises WeightsInvalid naming the first bad key;
a model is only returned once every tensor has been checked.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from pipeline.errors import WeightsInvalid
from pipeline.media.audio import MEL_BINS, MEL_STEP

log = logging.getLogger(__name__)

IMG_SIZE = 96  # px, square face crop the network sees
FACE_CHANNELS = 6  # masked crop (3) + reference crop (3)
DP_PREFIX = "module."  # what torch.nn.DataParallel adds to every key

# Face encoder stages: (in, out, kernel, stride, padding, residual 3x3 blocks after the first).
# Spatial size per stage: 96 -> 96 -> 48 -> 24 -> 12 -> 6 -> 3; the last stage (BOTTLENECK) -> 1.
FACE_STAGES = (
    (6, 16, 7, 1, 3, 0),
    (16, 32, 3, 2, 1, 2),
    (32, 64, 3, 2, 1, 3),
    (64, 128, 3, 2, 1, 2),
    (128, 256, 3, 2, 1, 2),
    (256, 512, 3, 2, 1, 1),
)
# Audio encoder stages, flattened into one Sequential. Mel (80, 16) -> (80, 16) -> (27, 16)
# -> (9, 6) -> (3, 3); the BOTTLENECK then -> (1, 1).
AUDIO_STAGES = (
    (1, 32, 3, 1, 1, 2),
    (32, 64, 3, (3, 1), 1, 2),
    (64, 128, 3, 3, 1, 2),
    (128, 256, 3, (3, 2), 1, 1),
)
EMBED = 512  # channels of the face and audio embeddings (1x1 spatial)
# Face decoder stages: (out channels, residual blocks). Stage 0 is a 1x1 conv on the
# audio embedding; stage 1 a stride-1 transposed conv (1x1 -> 3x3); the rest double the
# size (3 -> 6 -> 12 -> 24 -> 48 -> 96). Each stage's input is the previous stage's output
# concatenated with the face encoder's skip of the same size.
DECODER_STAGES = ((512, 0), (512, 1), (512, 2), (384, 2), (256, 2), (128, 2), (64, 2))
OUTPUT_HIDDEN = 32  # channels of the output block's 3x3 conv


class ConvBlock(nn.Module):
    """conv (or transposed conv) -> BatchNorm -> optional residual add -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int, *,
                 residual: bool = False, transpose: bool = False, output_padding: int = 0) -> None:
        super().__init__()
        conv: nn.Module
        if transpose:
            conv = nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding)
        else:
            conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        if self.residual:
            y = y + x
        return torch.relu(y)


def _stage(cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int,
           n_residual: int) -> list[nn.Module]:
    """A strided conv followed by ``n_residual`` same-size residual 3x3 convs."""
    return [ConvBlock(cin, cout, kernel, stride, padding)] + [
        ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(n_residual)]


def _bottleneck(cin: int) -> list[nn.Module]:
    """3x3 -> 1x1 spatial (3x3 valid conv), then a 1x1 conv: the 512-channel embedding."""
    return [ConvBlock(cin, EMBED, 3, 1, 0), ConvBlock(EMBED, EMBED, 1, 1, 0)]


class Wav2Lip(nn.Module):
    """forward(mel (B, 1, 80, 16), face (B, 6, 96, 96)) -> (B, 3, 96, 96) in [0, 1], BGR."""

    def __init__(self) -> None:
        super().__init__()
        face = [nn.Sequential(*_stage(*s)) for s in FACE_STAGES]
        face.append(nn.Sequential(*_bottleneck(EMBED)))
        self.face_encoder_blocks = nn.ModuleList(face)

        audio = [m for s in AUDIO_STAGES for m in _stage(*s)] + _bottleneck(AUDIO_STAGES[-1][1])
        self.audio_encoder = nn.Sequential(*audio)

        skips = [s[1] for s in FACE_STAGES][::-1]  # 512, 256, 128, 64, 32, 16 after the first 512
        skips = [EMBED, *skips]
        decoder: list[nn.Module] = []
        cin = EMBED
        for i, (cout, n_res) in enumerate(DECODER_STAGES):
            if i == 0:
                first = ConvBlock(cin, cout, 1, 1, 0)
            elif i == 1:
                first = ConvBlock(cin, cout, 3, 1, 0, transpose=True)
            else:
                first = ConvBlock(cin, cout, 3, 2, 1, transpose=True, output_padding=1)
            decoder.append(nn.Sequential(first, *[ConvBlock(cout, cout, 3, 1, 1, residual=True)
                                                  for _ in range(n_res)]))
            cin = cout + skips[i]
        self.face_decoder_blocks = nn.ModuleList(decoder)

        self.output_block = nn.Sequential(
            ConvBlock(cin, OUTPUT_HIDDEN, 3, 1, 1),
            nn.Conv2d(OUTPUT_HIDDEN, 3, kernel_size=1, stride=1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 4 or tuple(mel.shape[1:]) != (1, MEL_BINS, MEL_STEP):
            raise ValueError(f"mel must be (B, 1, {MEL_BINS}, {MEL_STEP}), got {tuple(mel.shape)}")
        if face.dim() != 4 or tuple(face.shape[1:]) != (FACE_CHANNELS, IMG_SIZE, IMG_SIZE):
            raise ValueError(f"face must be (B, {FACE_CHANNELS}, {IMG_SIZE}, {IMG_SIZE}), got {tuple(face.shape)}")
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mel)  # (B, 512, 1, 1)
        for block, skip in zip(self.face_decoder_blocks, reversed(skips)):
            x = torch.cat((block(x), skip), dim=1)  # (B, out + skip channels, s, s)
        return self.output_block(x)  # (B, 3, 96, 96)


# ---- loading published checkpoints ---------------------------------------------------------


@functools.cache
def expected_shapes() -> Mapping[str, torch.Size]:
    """Every state_dict key of :class:`Wav2Lip` in order, with its shape (read-only, built once
    on the meta device without allocating)."""
    with torch.device("meta"):
        model = Wav2Lip()
    return MappingProxyType(OrderedDict((k, v.shape) for k, v in model.state_dict().items()))


def _read(path: str) -> Any:
    """The checkpoint object, its tensors memory-mapped from the file where the file is in
    torch's zip format (no second copy in memory: ``load_wav2lip`` assigns them to the model);
    a file in the legacy format is read whole."""
    name = os.path.basename(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # the legacy format
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip, pickle and storage errors all mean "not a checkpoint"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsInvalid(f"Wav2Lip checkpoint {name} cannot be read as a PyTorch checkpoint with "
                             f"weights_only=True ({type(exc).__name__}: {detail[:300]}); the file is "
                             f"corrupt, truncated or not a checkpoint: download it again") from exc


def extract_state_dict(obj: Any, *, name: str = "checkpoint") -> OrderedDict[str, Any]:
    """The state_dict inside a loaded checkpoint object, with any ``module.`` prefix removed."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsInvalid(f"Wav2Lip checkpoint {name} holds no state_dict (found {type(obj).__name__}); "
                             f"expected {{'state_dict': {{name: tensor}}}} or a bare state_dict")
    state: OrderedDict[str, Any] = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str):
            raise WeightsInvalid(f"Wav2Lip checkpoint {name}: key {key!r} is not a string")
        bare = key[len(DP_PREFIX):] if key.startswith(DP_PREFIX) else key
        if bare in state:
            raise WeightsInvalid(f"Wav2Lip checkpoint {name}: key {bare!r} appears both with and without "
                                 f"the {DP_PREFIX!r} prefix")
        state[bare] = value
    return state


def check_state_dict(state: Mapping[str, Any], *, name: str = "checkpoint") -> None:
    """Raise WeightsInvalid naming the first key that does not fit :class:`Wav2Lip`.

    Keys are checked in the checkpoint's order (unexpected, not a tensor, wrong shape or
    dtype), then the model's keys missing from it, in the model's order; only a checkpoint
    that passes all that is scanned for NaN/inf values.
    """
    expected = expected_shapes()
    problems: list[str] = []
    for key, value in state.items():
        if key not in expected:
            problems.append(f"unexpected key {key!r}")
        elif not isinstance(value, torch.Tensor):
            problems.append(f"key {key!r} is a {type(value).__name__}, not a tensor")
        elif value.shape != expected[key]:
            problems.append(f"key {key!r} has shape {tuple(value.shape)}, expected {tuple(expected[key])}")
        elif not (value.is_floating_point() or key.endswith("num_batches_tracked")):
            problems.append(f"key {key!r} has dtype {value.dtype}, expected a floating point tensor")
    problems += [f"missing key {k!r}" for k in expected if k not in state]
    if not problems:
        problems = [f"key {k!r} contains NaN or infinite values"
                    for k, v in state.items() if v.is_floating_point() and not _finite(v)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise WeightsInvalid(f"Wav2Lip checkpoint {name} does not match the Wav2Lip generator: "
                             f"{problems[0]}{more}. Use the published wav2lip.pth or wav2lip_gan.pth")


def _finite(t: torch.Tensor) -> bool:
    """No NaN/inf in ``t``: a sum is ten times cheaper than isfinite(); only a sum that is
    not finite (a NaN, an inf, or an overflow of huge values) needs the exact test."""
    return bool(torch.isfinite(t.sum(dtype=torch.float64))) or bool(torch.isfinite(t).all())


def load_wav2lip(path: str | os.PathLike[str], *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Wav2Lip:
    """A :class:`Wav2Lip` in eval mode on ``device``/``dtype`` with the weights at ``path``."""
    path = os.fspath(path)
    name = os.path.basename(path)
    state = extract_state_dict(_read(path), name=name)
    check_state_dict(state, name=name)
    with torch.device("meta"):
        model = Wav2Lip()
    model.load_state_dict(state, strict=True, assign=True)  # every key checked above: all or nothing
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.info("Wav2Lip loaded from %s on %s (%s)", name, device, dtype)
    return model


def save_checkpoint(model: Wav2Lip, path: str | os.PathLike[str], *, prefix: str = DP_PREFIX,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Save ``model`` in the published layout: ``{"state_dict": {prefix + key: tensor}, **extra}``.

    ``prefix=""`` writes keys without DataParallel's prefix; for tests and re-exports.
    """
    state = OrderedDict((prefix + k, v.detach().cpu()) for k, v in model.state_dict().items())
    torch.save({"state_dict": state, **(extra or {})}, os.fspath(path))
