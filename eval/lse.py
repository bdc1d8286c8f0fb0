"""LSE-D, LSE-C and AV offset exactly as syncnet_python's ``SyncNetInstance.evaluate``.

Inputs are what ``evaluate`` reads from its temporary folder: 224x224 BGR face crops at
25 fps (0-255, as floats) and 16 kHz mono int16 audio. The algorithm, step for step:

- MFCC: ``python_speech_features.mfcc(audio, 16000)`` defaults, 13 coefficients at 100 Hz,
  transposed to (13, T).
- ``min_length = min(frames, floor(samples / 640))``; windows start at every frame
  ``v < min_length - 5``: video frames [v, v+5) against MFCC columns [4v, 4v+20).
- Lip and audio embeddings (1024-d) of every window, in batches of ``batch_size``.
- The audio embeddings are zero-padded by ``vshift`` (15) on each side; for every window
  the L2 distance (``torch.nn.functional.pairwise_distance``, eps 1e-6) to the 31 shifted
  audio embeddings; averaged over windows: ``mdist`` (31,).
- LSE-D = min(mdist), LSE-C = median(mdist) - min(mdist), offset = vshift - argmin.

Face crops follow syncnet_python's ``run_pipeline.crop_video`` on the tracker's boxes:
box size s = max(w, h) / 2 and centre, each median-filtered over 13 frames, the frame
padded by ``int(s * 1.8)`` with the value 110, rows [cy - s, cy + 1.8 s), cols
[cx - 1.4 s, cx + 1.4 s) (int-truncated as there), resized to 224x224 (bilinear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from typing import TYPE_CHECKING

import cv2
import numpy as np
import python_speech_features
from scipy import signal

if TYPE_CHECKING:
    from eval.syncnet import SyncNetS

LSE_FPS = 25.0  # video rate SyncNet was trained on
SAMPLE_RATE = 16000  # Hz
SAMPLES_PER_FRAME = 640  # 16000 / 25
MFCC_PER_FRAME = 4  # MFCC columns per video frame: 100 Hz / 25 fps
VSHIFT = 15  # frames searched each way: 31 shifts
BATCH_SIZE = 20  # windows per forward pass (syncnet_python's default)
LIP_FRAMES = 5  # video frames per window: 0.2 s at 25 fps
MFCC_WINDOW = 20  # MFCC columns per 5-frame window: 0.2 s at 100 Hz
CROP_SIZE = 224  # px, square BGR face crop
CROP_SCALE = 0.4  # run_pipeline's --crop_scale
CROP_PAD_VALUE = 110  # run_pipeline's np.pad constant
SMOOTH_KERNEL = 13  # run_pipeline's medfilt kernel over box size and centre

CONVENTION = {
    "reference": "syncnet_python SyncNetInstance.evaluate",
    "fps": LSE_FPS, "crop": f"run_pipeline crop_video: s=max(w,h)/2, rows [cy-s, cy+1.8s), cols "
                            f"[cx-1.4s, cx+1.4s), pad {CROP_PAD_VALUE}, medfilt {SMOOTH_KERNEL}, "
                            f"{CROP_SIZE}x{CROP_SIZE} bilinear",
    "colour": "BGR 0-255 float", "audio": "16 kHz mono int16",
    "mfcc": "python_speech_features.mfcc(audio, 16000) defaults (13 x 100 Hz)",
    "window": f"{LIP_FRAMES} frames vs {MFCC_WINDOW} MFCC columns", "vshift": VSHIFT,
    "distance": "mean pairwise L2 over windows; LSE-D = min, LSE-C = median - min, offset = vshift - argmin",
}


@dataclass(frozen=True)
class LseResult:
    offset: int  # frames; positive when the audio leads the video
    min_dist: float  # LSE-D
    confidence: float  # LSE-C
    windows: int  # 5-frame windows evaluated
    mdist: tuple[float, ...]  # mean distance per shift, shift -vshift..+vshift


def to_int16(wav: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] -> int16 as ffmpeg's pcm_s16le does: round(x * 32768), clipped."""
    return np.clip(np.rint(np.asarray(wav, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def mfcc(audio: np.ndarray) -> np.ndarray:
    """(13, T) MFCC of 16 kHz int16 audio, python_speech_features defaults."""
    return np.ascontiguousarray(python_speech_features.mfcc(audio, SAMPLE_RATE).T)  # (T, 13) -> (13, T)


def crop_params(boxes: np.ndarray) -> np.ndarray:
    """(N, 3) smoothed (cx, cy, s) per frame from (N, 4) boxes, run_pipeline's smoothing."""
    boxes = np.asarray(boxes, np.float64)
    s = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    return np.stack([signal.medfilt(v, kernel_size=SMOOTH_KERNEL) for v in (cx, cy, s)], axis=1)  # (N, 3)


def face_crop(frame: np.ndarray, cx: float, cy: float, s: float) -> np.ndarray:
    """run_pipeline's crop of one BGR frame: (224, 224, 3) uint8.

    Same pixels as padding the frame by ``int(s * 1.8)`` with 110 and slicing, without
    padding the whole frame.
    """
    bsi = int(s * (1 + 2 * CROP_SCALE))
    my, mx = cy + bsi, cx + bsi
    r0, r1 = int(my - s), int(my + s * (1 + 2 * CROP_SCALE))
    c0, c1 = int(mx - s * (1 + CROP_SCALE)), int(mx + s * (1 + CROP_SCALE))
    h, w = frame.shape[:2]
    ph, pw = h + 2 * bsi, w + 2 * bsi  # padded frame size
    r0, r1, c0, c1 = max(0, min(r0, ph)), max(0, min(r1, ph)), max(0, min(c0, pw)), max(0, min(c1, pw))
    out = np.full((r1 - r0, c1 - c0, 3), CROP_PAD_VALUE, np.uint8)
    fr0, fr1 = max(r0, bsi), min(r1, bsi + h)  # rows of the real frame inside the crop
    fc0, fc1 = max(c0, bsi), min(c1, bsi + w)
    if fr1 > fr0 and fc1 > fc0:
        out[fr0 - r0:fr1 - r0, fc0 - c0:fc1 - c0] = frame[fr0 - bsi:fr1 - bsi, fc0 - bsi:fc1 - bsi]
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError(f"empty face crop for centre ({cx:.1f}, {cy:.1f}) size {s:.1f}")
    return cv2.resize(out, (CROP_SIZE, CROP_SIZE))


def evaluate(model: SyncNetS, crops: np.ndarray, audio: np.ndarray, *, vshift: int = VSHIFT,
             batch_size: int = BATCH_SIZE, device: str | None = None) -> LseResult:
    """``SyncNetInstance.evaluate`` on (N, 224, 224, 3) BGR crops at 25 fps and int16 audio,
    on ``device`` (default: the model's own).

    Raises ValueError when the clip is shorter than one 5-frame window (6 frames / 0.24 s).
    (torch is imported here, not with the module: scoring without weights never needs it.)
    """
    import torch

    if device is None:
        device = str(next(model.parameters()).device)
    with torch.no_grad():
        return _evaluate(model, crops, audio, vshift=vshift, batch_size=batch_size, device=device)


def _evaluate(model: SyncNetS, crops: np.ndarray, audio: np.ndarray, *, vshift: int,
              batch_size: int, device: str) -> LseResult:
    import torch

    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"expected (N, {CROP_SIZE}, {CROP_SIZE}, 3) crops, got {crops.shape}")
    cc = torch.from_numpy(mfcc(audio).astype(np.float32))  # (13, T)
    min_length = min(len(crops), math.floor(len(audio) / SAMPLES_PER_FRAME))
    lastframe = min_length - LIP_FRAMES
    if lastframe < 1:
        raise ValueError(f"too short for LSE: {min_length} frames of 25 fps video with audio, "
                         f"need at least {LIP_FRAMES + 1}")
    im_feat, cc_feat = [], []
    for i in range(0, lastframe, batch_size):
        starts = range(i, min(lastframe, i + batch_size))
        clip = torch.from_numpy(crops[i:starts[-1] + LIP_FRAMES].astype(np.float32))  # (b+4, 224, 224, 3)
        clip = clip.permute(3, 0, 1, 2)  # (3, b+4, 224, 224)
        lips = torch.stack([clip[:, v - i:v - i + LIP_FRAMES] for v in starts])  # (b, 3, 5, 224, 224)
        auds = torch.stack([cc[:, v * MFCC_PER_FRAME:v * MFCC_PER_FRAME + MFCC_WINDOW]
                            for v in starts]).unsqueeze(1)  # (b, 1, 13, 20)
        im_feat.append(model.forward_lip(lips.to(device)).cpu())
        cc_feat.append(model.forward_aud(auds.to(device)).cpu())
    im = torch.cat(im_feat, 0)  # (L, 1024)
    au = torch.cat(cc_feat, 0)  # (L, 1024)
    win = 2 * vshift + 1
    aup = torch.nn.functional.pad(au, (0, 0, vshift, vshift))  # (L + 2 vshift, 1024)
    dists = torch.stack([torch.nn.functional.pairwise_distance(im[[k], :].repeat(win, 1), aup[k:k + win, :])
                         for k in range(len(im))], 1)  # (31, L)
    mdist = torch.mean(dists, 1)  # (31,)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return LseResult(offset=int(vshift - minidx), min_dist=float(minval), confidence=float(conf),
                     windows=len(im), mdist=tuple(float(v) for v in mdist))


def resample_indices(n_frames: int, fps: float) -> np.ndarray:
    """Source frame index of each 25 fps frame of an ``fps`` video of ``n_frames`` frames
    (the nearest source frame, as ffmpeg's fps filter picks)."""
    if abs(fps - LSE_FPS) < 1e-6:
        return np.arange(n_frames)
    n_out = max(0, int(math.floor(n_frames * LSE_FPS / fps)))
    return np.minimum(np.floor(np.arange(n_out) * fps / LSE_FPS + 0.5).astype(np.int64), n_frames - 1)
