"""The "wav2lip" generator: face crops and mel windows in, feathered mouth patches out.

Inputs are prepared exactly as Wav2Lip's inference.py does: the tracked box grown by the
pads (top, bottom, left, right; default 0, 10, 0, 0), clipped to the frame and truncated to
ints, cropped from the BGR frame and resized to 96x96; the 6-channel input is that crop
with its lower half zeroed followed by the same crop as reference, /255, channels first;
the mel window is (1, 80, 16). The output (x255, truncated to uint8) is resized back to
the crop box. Unlike Wav2Lip's hard paste of the whole box, the Patch keeps the top
``KEEP_TOP`` of the crop from the original frame (the model only redraws the masked lower
half; its copy of the upper half is a blurred 96x96 round trip) and feathers every edge.

One model per process: :func:`get_model` loads a checkpoint once per (path, sha256, mtime,
device, dtype) and shares it with every job and thread. :func:`forward_batches` runs under
``torch.inference_mode`` and the process-wide :func:`pipeline.device.gpu_lock`, and halves
the batch on CUDA out-of-memory instead of failing the job.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from pipeline.generators.blend import Patch, feather_mask
from pipeline.device import choose_device, choose_dtype, configure_cpu_threads, gpu_lock
from pipeline.generators.base import Generator, GeneratorJob, local_forward
from pipeline.generators.wav2lip.model import IMG_SIZE, Wav2Lip, load_wav2lip
from pipeline.media.audio import MEL_BINS, MEL_STEP
from pipeline.options import DEFAULT_PADS
from pipeline.weights import WAV2LIP, ModelCache, ResolvedWeights, resolve

log = logging.getLogger(__name__)

GPU_BATCH = 128  # frames per forward on CUDA (Wav2Lip's default; well under 4 GiB in fp16)
CPU_BATCH = 8  # frames per forward on CPU: smaller batches run faster here (cache) and hold less (bench/wav2lip_batch.py)
MIN_CROP = 8  # px: a crop box narrower or shorter than this gets no patch
KEEP_TOP = 0.4  # fraction of the crop height, from its top, left exactly as in the frame
MAX_MODELS = 2  # loaded checkpoints kept per process (normally one)

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---- inputs and outputs, as Wav2Lip prepares them ---------------------------------------


def crop_box(box: Sequence[float], pads: Sequence[int], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The tracked ``box`` grown by ``pads`` and clipped to the frame, as ints; None if tiny."""
    top, bottom, left, right = pads
    x1, y1 = int(max(0.0, box[0] - left)), int(max(0.0, box[1] - top))
    x2, y2 = int(min(float(width), box[2] + right)), int(min(float(height), box[3] + bottom))
    if x2 - x1 < MIN_CROP or y2 - y1 < MIN_CROP:
        return None
    return x1, y1, x2, y2


def prepare_faces(crops: Sequence[np.ndarray]) -> np.ndarray:
    """BGR uint8 crops of any size -> (B, 96, 96, 6) uint8: lower-half-masked crop + reference.

    Kept as uint8 so that a GPU receives a quarter of the bytes; :func:`to_model_input`
    does the /255 and the move to channels first on the model's device.
    """
    faces = np.stack([cv2.resize(c, (IMG_SIZE, IMG_SIZE)) for c in crops])  # (B, 96, 96, 3)
    masked = faces.copy()
    masked[:, IMG_SIZE // 2:] = 0  # the lower half is what the model must draw
    return np.concatenate((masked, faces), axis=3)  # (B, 96, 96, 6)


def to_model_input(faces: np.ndarray | torch.Tensor, mels: np.ndarray | torch.Tensor, *,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 96, 96, 6) uint8 faces and (B, 80, 16) mels -> the model's (mel, face) tensors.

    face: (B, 6, 96, 96) = uint8 / 255 in float32 (bit-identical to Wav2Lip's float64
    division cast to float32), then cast to ``dtype``; mel: (B, 1, 80, 16).
    """
    face = torch.as_tensor(faces).to(device, non_blocking=True)
    face = face.permute(0, 3, 1, 2).float().div_(255.0).to(dtype)  # (B, 6, 96, 96), NHWC strides
    mel = torch.as_tensor(mels, dtype=torch.float32)
    if mel.dim() != 3 or tuple(mel.shape[1:]) != (MEL_BINS, MEL_STEP):
        raise ValueError(f"mels must be (B, {MEL_BINS}, {MEL_STEP}), got {tuple(mel.shape)}")
    mel = mel.to(device, non_blocking=True).unsqueeze(1).to(dtype)  # (B, 1, 80, 16)
    return mel, face


@functools.lru_cache(maxsize=128)
def patch_alpha(h: int, w: int) -> np.ndarray:
    """(h, w) alpha for a crop: 0 over the top KEEP_TOP, feathered in, 1 over the mouth."""
    top = int(h * KEEP_TOP)
    alpha = np.zeros((h, w), np.float32)
    alpha[top:] = feather_mask(h - top, w)
    alpha.setflags(write=False)
    return alpha


def to_patch(pred: np.ndarray, box: tuple[int, int, int, int]) -> Patch:
    """One (96, 96, 3) uint8 prediction resized into ``box`` with :func:`patch_alpha`."""
    x1, y1, x2, y2 = box
    image = cv2.resize(pred, (x2 - x1, y2 - y1))  # (h, w, 3)
    return Patch(box=box, image=image, alpha=patch_alpha(y2 - y1, x2 - x1))


# ---- the forward pass ---------------------------------------------------------------------


def forward_batches(model: Model, faces: np.ndarray, mels: np.ndarray, *, batch_size: int,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                    ) -> tuple[np.ndarray, int]:
    """Run ``model`` over (N, 96, 96, 6) uint8 faces and (N, 80, 16) mels in chunks of
    ``batch_size``; return (N, 96, 96, 3) uint8 predictions and the batch size that worked.

    Each chunk holds :func:`gpu_lock` only for its forward pass. On CUDA out-of-memory the
    chunk is retried at half the size, down to one frame, before the error is let through.
    """
    n = len(faces)
    out = np.empty((n, IMG_SIZE, IMG_SIZE, 3), np.uint8)
    size, start = max(1, batch_size), 0
    with torch.inference_mode():
        while start < n:
            stop = min(n, start + size)
            try:
                with gpu_lock():
                    mel_t, face_t = to_model_input(faces[start:stop], mels[start:stop], device=device, dtype=dtype)
                    pred = model(mel_t, face_t)  # (b, 3, 96, 96) in [0, 1]
                    pred = (pred.permute(0, 2, 3, 1).float() * 255.0).to(torch.uint8)  # (b, 96, 96, 3), truncated
                    out[start:stop] = pred.cpu().numpy()
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                size //= 2
                log.warning("CUDA out of memory at %d frames per batch; retrying at %d", stop - start, size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start = stop
    return out, size


# ---- one model per process ----------------------------------------------------------------

_models: ModelCache[Wav2Lip] = ModelCache(MAX_MODELS)


def get_model(weights: ResolvedWeights, *, device: torch.device, dtype: torch.dtype) -> Wav2Lip:
    """The process's Wav2Lip for ``weights`` on ``device``/``dtype``, loaded on first use."""
    key = (weights.path, weights.sha256, os.stat(weights.path).st_mtime_ns, str(device), dtype)

    def load() -> Wav2Lip:
        model = load_wav2lip(weights.path, device=device, dtype=dtype)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)  # the inputs arrive NHWC
            torch.backends.cudnn.benchmark = True  # fixed 96x96 shapes: pick the fastest kernels once
        return model

    return _models.get(key, load)


def clear_models() -> None:
    """Forget every loaded model (tests; switching weights in a long-lived process)."""
    _models.clear()


# ---- the generator -------------------------------------------------------------------------


class Wav2LipJob(GeneratorJob):
    """Per-job state: the batch size that fits (it shrinks for the rest of the job after an OOM)."""

    def __init__(self, gen: Wav2LipGenerator) -> None:
        self.gen = gen
        self.batch_size = gen.default_batch_size

    def process(self, frames: np.ndarray, mels: np.ndarray, faces: Sequence[Any]) -> list[Patch | None]:
        """One Patch per frame with a usable face, None for the others."""
        if not len(frames) == len(mels) == len(faces):
            raise ValueError(f"frames, mels and faces differ in length: {len(frames)}, {len(mels)}, {len(faces)}")
        patches: list[Patch | None] = [None] * len(frames)
        todo: list[tuple[int, tuple[int, int, int, int]]] = []
        for i, face in enumerate(faces):
            if face is not None:
                h, w = frames[i].shape[:2]
                box = crop_box(face.box, self.gen.pads, w, h)
                if box is not None:
                    todo.append((i, box))
        if not todo:
            return patches
        crops = [frames[i][y1:y2, x1:x2] for i, (x1, y1, x2, y2) in todo]
        face_in = prepare_faces(crops)  # (n, 96, 96, 6)
        mel_in = np.asarray(mels, np.float32)[[i for i, _ in todo]]  # (n, 80, 16)
        if self.forward_fn is local_forward:  # here: the batch size shrinks for the job after an OOM
            preds, self.batch_size = forward_batches(self.gen.model, face_in, mel_in, batch_size=self.batch_size,
                                                     device=self.gen.device, dtype=self.gen.dtype)
        else:  # elsewhere (a shared model server): (face, mel) per frame in, a prediction per frame out
            preds = self.forward_fn(self.gen, list(zip(face_in, mel_in)))
        for (i, box), pred in zip(todo, preds):
            patches[i] = to_patch(pred, box)
        return patches


class Wav2LipGenerator(Generator):
    """Wav2Lip with the weights :func:`pipeline.weights.resolve` finds (WeightsUnavailable if none)."""

    name = "wav2lip"
    needs_faces = True
    needs_track_landmarks = False  # crops come from the boxes (with Wav2Lip's pads)

    def __init__(self, *, checkpoint: str | os.PathLike[str] | None = None, device: str = "auto",
                 batch_size: int | None = None, pads: Sequence[int] = DEFAULT_PADS,
                 allow_download: bool = True) -> None:
        if len(pads) != 4:
            raise ValueError(f"pads must be (top, bottom, left, right), got {pads!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = choose_device(device)
        if self.device.type == "cpu":
            configure_cpu_threads()
        self.weights = resolve(WAV2LIP, checkpoint, allow_download=allow_download)
        self.dtype = choose_dtype(self.device)
        self.default_batch_size = batch_size or (GPU_BATCH if self.device.type == "cuda" else CPU_BATCH)
        self.pads = tuple(int(p) for p in pads)
        self.model = get_model(self.weights, device=self.device, dtype=self.dtype)

    def checkpoint_info(self) -> dict[str, str]:
        """Which file produced the video: {"path", "sha256", "source"}."""
        return {"path": self.weights.path, "sha256": self.weights.sha256, "source": self.weights.source}

    def forward(self, items: Sequence[Any]) -> list[np.ndarray]:
        """((96, 96, 6) uint8 face input, (80, 16) mel) per frame -> its (96, 96, 3) uint8 prediction."""
        faces = np.stack([face for face, _ in items])  # (N, 96, 96, 6)
        mels = np.stack([np.asarray(mel, np.float32) for _, mel in items])  # (N, 80, 16)
        preds, _ = forward_batches(self.model, faces, mels, batch_size=self.default_batch_size,
                                   device=self.device, dtype=self.dtype)
        return list(preds)

    def spec(self) -> dict[str, Any]:
        return {"checkpoint": self.weights.path, "pads": self.pads}

    def new_job(self, *, fps: float, width: int, height: int) -> Wav2LipJob:
        return Wav2LipJob(self)


def make_wav2lip_generator(*, checkpoint: str | os.PathLike[str] | None = None, device: str = "auto",
                           pads: Sequence[int] = DEFAULT_PADS, batch_size: int | None = None,
                           allow_download: bool = True) -> Wav2LipGenerator:
    """The entry point ``pipeline.generators.get_generator("wav2lip", ...)`` calls.

    Resolves the checkpoint (WeightsUnavailable naming every place tried and the fix) and
    loads it once per process (WeightsInvalid for a file that does not fit)."""
    return Wav2LipGenerator(checkpoint=checkpoint, device=device, pads=pads, batch_size=batch_size,
                            allow_download=allow_download)
