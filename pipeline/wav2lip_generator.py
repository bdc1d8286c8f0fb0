"""The "wav2lip" generator: face crops and mel windows in, feathered mouth patches out.

Inputs are prepared exactly as Wav2Lip's inference.py does: the tracked box grown by the
pads (top, bottom, left, right; default 0, 10, 0, 0) and clipped to the frame, cropped from
the BGR frame, resized to 96x96; the 6-channel input is that crop with its lower half zeroed
followed by the same crop as reference, /255, channels first. The output (x255, truncated
to uint8) is resized back to the crop box and returned as a Patch whose feathered alpha
covers the crop, so nothing outside the crop box, above the face's top edge, changes.

One model per process: :func:`get_model` loads a checkpoint once per (path, sha256, mtime,
device, dtype) and shares it with every job and thread. :func:`forward_with_retry` halves
the batch on CUDA out-of-memory instead of failing the job.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from pipeline.blend import Patch, feather_mask
from pipeline.device import choose_device, choose_dtype, gpu_lock
from pipeline.generators import Generator, GeneratorJob, register_generator
from pipeline.models.wav2lip import IMG_SIZE, MEL_BINS, MEL_STEP, Wav2Lip, load_wav2lip
from pipeline.weights import WAV2LIP, ResolvedWeights, resolve

log = logging.getLogger(__name__)

DEFAULT_PADS = (0, 10, 0, 0)  # top, bottom, left, right in px: Wav2Lip's --pads default
GPU_BATCH = 128  # frames per forward on CUDA (Wav2Lip's default; ~2 GiB in fp16)
CPU_BATCH = 16  # frames per forward on CPU
MIN_CROP = 8  # px: a crop box narrower or shorter than this gets no patch
MAX_MODELS = 2  # loaded checkpoints kept per process (normally one)


# ---- inputs and outputs, as Wav2Lip prepares them ---------------------------------------


def crop_box(box: Sequence[float], pads: Sequence[int], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The tracked ``box`` grown by ``pads`` and clipped to the frame, as ints; None if tiny."""
    top, bottom, left, right = pads
    x1, y1 = int(max(0.0, box[0] - left)), int(max(0.0, box[1] - top))
    x2, y2 = int(min(float(width), box[2] + right)), int(min(float(height), box[3] + bottom))
    if x2 - x1 < MIN_CROP or y2 - y1 < MIN_CROP:
        return None
    return x1, y1, x2, y2


def prepare_faces(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """BGR uint8 crops of any size -> (B, 6, 96, 96) float32: masked crop + reference, /255."""
    faces = np.stack([cv2.resize(c, (IMG_SIZE, IMG_SIZE)) for c in crops])  # (B, 96, 96, 3)
    masked = faces.copy()
    masked[:, IMG_SIZE // 2:] = 0  # the lower half is what the model must draw
    x = np.concatenate((masked, faces), axis=3).astype(np.float32) / 255.0  # (B, 96, 96, 6)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (B, 6, 96, 96)


def prepare_mels(mels: np.ndarray) -> torch.Tensor:
    """(B, 80, 16) mel windows -> (B, 1, 80, 16) float32."""
    mels = np.asarray(mels, dtype=np.float32)
    if mels.ndim != 3 or mels.shape[1:] != (MEL_BINS, MEL_STEP):
        raise ValueError(f"mels must be (B, {MEL_BINS}, {MEL_STEP}), got {mels.shape}")
    return torch.from_numpy(np.ascontiguousarray(mels[:, None]))  # (B, 1, 80, 16)


@functools.lru_cache(maxsize=64)
def feather_alpha(h: int, w: int) -> np.ndarray:
    """blend's feathered (h, w) alpha over the whole crop, cached per size and read-only."""
    alpha = feather_mask(h, w)
    alpha.setflags(write=False)
    return alpha


def to_patch(pred: np.ndarray, box: tuple[int, int, int, int]) -> Patch:
    """One (96, 96, 3) uint8 prediction resized into ``box`` with a feathered alpha."""
    x1, y1, x2, y2 = box
    image = cv2.resize(pred, (x2 - x1, y2 - y1))  # (h, w, 3)
    return Patch(box=box, image=image, alpha=feather_alpha(y2 - y1, x2 - x1))


# ---- the forward pass ---------------------------------------------------------------------


def forward_with_retry(model: torch.nn.Module, mel: torch.Tensor, face: torch.Tensor, *,
                       batch_size: int, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, int]:
    """Run ``model`` over CPU tensors in chunks of ``batch_size``; return (B, 96, 96, 3)
    uint8 predictions and the batch size that worked. On CUDA out-of-memory the chunk is
    retried at half the size, down to 1 frame, before the error is let through."""
    n = face.shape[0]
    out = torch.empty((n, IMG_SIZE, IMG_SIZE, 3), dtype=torch.uint8)
    size, start = max(1, batch_size), 0
    with torch.inference_mode():
        while start < n:
            stop = min(n, start + size)
            try:
                with gpu_lock():
                    pred = model(mel[start:stop].to(device=device, dtype=dtype),
                                 face[start:stop].to(device=device, dtype=dtype))  # (b, 3, 96, 96)
                    pred = (pred.float() * 255.0).to(torch.uint8).cpu()  # truncates, as Wav2Lip's astype
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                size //= 2
                log.warning("CUDA out of memory at %d frames per batch; retrying at %d", stop - start, size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            out[start:stop] = pred.permute(0, 2, 3, 1)  # (b, 96, 96, 3)
            start = stop
    return out.numpy(), size


# ---- one model per process ----------------------------------------------------------------

_models: OrderedDict[tuple[Any, ...], Wav2Lip] = OrderedDict()
_models_lock = threading.Lock()


def get_model(weights: ResolvedWeights, *, device: torch.device, dtype: torch.dtype) -> Wav2Lip:
    """The process's Wav2Lip for ``weights`` on ``device``/``dtype``, loaded on first use."""
    key = (weights.path, weights.sha256, os.stat(weights.path).st_mtime_ns, str(device), dtype)
    with _models_lock:  # later callers wait for the first load instead of loading again
        model = _models.get(key)
        if model is None:
            model = load_wav2lip(weights.path, device=device, dtype=dtype)
            _models[key] = model
            while len(_models) > MAX_MODELS:
                _models.popitem(last=False)
        _models.move_to_end(key)
        return model


def clear_models() -> None:
    """Forget every loaded model (tests; switching weights in a long-lived process)."""
    with _models_lock:
        _models.clear()


def preload(checkpoint: str | os.PathLike[str] | None = None, *, device: str = "auto",
            allow_download: bool = True) -> dict[str, str]:
    """Resolve and load the Wav2Lip model now (app start); returns its checkpoint info."""
    return Wav2LipGenerator(checkpoint=checkpoint, device=device, allow_download=allow_download).checkpoint_info()


# ---- the generator -------------------------------------------------------------------------


class Wav2LipJob(GeneratorJob):
    """Per-job state: frame size, pads and the batch size that fits (shrinks after an OOM)."""

    def __init__(self, gen: Wav2LipGenerator, *, width: int, height: int) -> None:
        self.gen = gen
        self.width, self.height = width, height
        self.batch_size = gen.default_batch_size

    def process(self, frames: np.ndarray, mels: np.ndarray, faces: Sequence[Any]) -> list[Patch | None]:
        """One Patch per frame with a face, None for frames without one."""
        if not (len(frames) == len(mels) == len(faces)):
            raise ValueError(f"frames, mels and faces differ in length: {len(frames)}, {len(mels)}, {len(faces)}")
        patches: list[Patch | None] = [None] * len(frames)
        todo: list[tuple[int, tuple[int, int, int, int]]] = []
        for i, face in enumerate(faces):
            box = None if face is None else crop_box(face.box, self.gen.pads, frames[i].shape[1], frames[i].shape[0])
            if box is not None:
                todo.append((i, box))
        if not todo:
            return patches
        crops = [frames[i][y1:y2, x1:x2] for i, (x1, y1, x2, y2) in todo]
        face_t = prepare_faces(crops)  # (n, 6, 96, 96)
        mel_t = prepare_mels(np.asarray(mels)[[i for i, _ in todo]])  # (n, 1, 80, 16)
        preds, self.batch_size = forward_with_retry(self.gen.model, mel_t, face_t, batch_size=self.batch_size,
                                                    device=self.gen.device, dtype=self.gen.dtype)
        for (i, box), pred in zip(todo, preds):
            patches[i] = to_patch(pred, box)
        return patches


class Wav2LipGenerator(Generator):
    """Wav2Lip with the weights :func:`pipeline.weights.resolve` finds (WeightsUnavailable if none)."""

    name = "wav2lip"
    needs_faces = True

    def __init__(self, *, checkpoint: str | os.PathLike[str] | None = None, device: str = "auto",
                 batch_size: int | None = None, pads: Sequence[int] = DEFAULT_PADS,
                 allow_download: bool = True) -> None:
        if len(pads) != 4:
            raise ValueError(f"pads must be (top, bottom, left, right), got {pads!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.weights = resolve(WAV2LIP, checkpoint, allow_download=allow_download)
        self.device = choose_device(device)
        self.dtype = choose_dtype(self.device)
        self.default_batch_size = batch_size or (GPU_BATCH if self.device.type == "cuda" else CPU_BATCH)
        self.pads = tuple(int(p) for p in pads)
        self.model = get_model(self.weights, device=self.device, dtype=self.dtype)

    def checkpoint_info(self) -> dict[str, str]:
        return {"path": self.weights.path, "sha256": self.weights.sha256, "source": self.weights.source}

    def new_job(self, *, fps: float, width: int, height: int) -> Wav2LipJob:
        return Wav2LipJob(self, width=width, height=height)


register_generator("wav2lip", Wav2LipGenerator)
