"""The sync proxy's per-frame measures: what the mouth does, and what the speech does.

Mouth (:func:`mouth_features`), from the landmarks of the fitted frames and a small grey
patch of the mouth region (:func:`mouth_patch`), each independent of the face's size:

- ``open``: mean inner-lip gap / mouth width (the proxy's first measure);
- ``area``: inner-lip polygon area / mouth width^2;
- ``jaw``: nose-bottom to chin distance / face box height;
- ``lower_lip``: lower outer lip below the mouth corners / mouth width;
- ``app1..app3``: the patch's first three principal components over the clip (teeth,
  tongue and the dark inside of an open mouth, which landmarks miss);
- ``change``: mean absolute patch change since the previous fitted frame, per frame;
- ``d_open``: the temporal derivative of ``open`` (central differences).

Frames without a fit are linearly interpolated. Speech (:func:`audio_features`), per video
frame, from 16 kHz mono through python_speech_features' 26-filter mel filterbank at 100 Hz:
``log_rms`` (log RMS of the 300-3000 Hz band, the proxy's first measure, in log), the log
energy of two mel band groups (``band_low_mid`` ~450-1200 Hz, ``band_high_mid`` ~1200-2800 Hz),
``mfcc2``, spectral flux (``flux``: onsets), and the deltas ``d_energy`` (log filterbank
energy) and ``d_mfcc2``.

Which measures: of a wider set (mouth spread, more appearance derivatives; four band groups,
MFCC 1-4, the linear envelope), these gave the calibration's best separation of own audio
from unrelated speech (docs/PROXY_CALIBRATION.md); the wider set overfits 8-14 s clips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from python_speech_features import fbank
from scipy import signal
from scipy.fft import dct

from pipeline.media.audio import SAMPLE_RATE
from pipeline.faces.types import Face, Mouth

BAND_HZ = (300.0, 3000.0)  # speech band of the RMS envelope
BAND_ORDER = 4  # Butterworth order (zero-phase: applied forwards and backwards)
MIN_SAMPLES = 256  # audio shorter than this has no usable band envelope (sosfiltfilt's padding)
FBANK_STEP_S = 0.01  # 100 Hz filterbank frames
FBANK_FILTERS = 26  # python_speech_features' default mel filters (0-8 kHz)
BAND_GROUPS = ((6, 12), (12, 19))  # mel filters ~450-1200 Hz and ~1200-2800 Hz (26 over 0-8 kHz)
MFCC_INDEX = 2  # the MFCC kept (0 is log energy, a band sum)
LOG_FLOOR = 1e-8  # added before logs of energies

PATCH_SIZE = (32, 24)  # (w, h) px of the resized mouth patch
PATCH_WIDTH = 1.7  # patch width / corner-to-corner mouth width
PATCH_ABOVE, PATCH_BELOW = 0.45, 0.75  # patch extent above / below the corners, x its width
N_APPEARANCE = 3  # principal components of the patches
MOVEMENT_FLOOR = 0.004  # std of ``open`` below this (~1 px on a 250 px mouth) is a still mouth

MOUTH_NAMES = ("open", "area", "jaw", "lower_lip", "app1", "app2", "app3", "change", "d_open")
AUDIO_NAMES = ("log_rms", "band_low_mid", "band_high_mid", "mfcc2", "flux", "d_energy", "d_mfcc2")


@dataclass(frozen=True)
class MouthFrames:
    """What scoring saw of the generated video's mouth: per frame the fitted face (None
    between fitted frames), the fitted frames' grey mouth patches, and the frame rate."""

    faces: tuple[Face | None, ...]
    patches: Mapping[int, np.ndarray | None]
    fps: float

    def features(self) -> np.ndarray:
        """(N, len(MOUTH_NAMES)) :func:`mouth_features` of these frames."""
        return mouth_features(self.faces, self.patches)


def mouth_patch(luma: np.ndarray, face: Face, origin: tuple[float, float] = (0.0, 0.0),
                scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray | None:
    """(PATCH_SIZE[1], PATCH_SIZE[0]) uint8 grey patch around the mouth of ``face`` (frame
    pixels) in ``luma``, an (H, W) image of the frame region at ``origin`` scaled by ``scale``;
    None without a mouth or when the patch leaves the image."""
    mouth = face.mouth
    if mouth is None or mouth.width <= 0:
        return None
    (x0, y0), (sx, sy) = origin, scale
    cx, cy = (mouth.left + mouth.right) / 2
    w = PATCH_WIDTH * mouth.width
    x1, x2 = (cx - w / 2 - x0) * sx, (cx + w / 2 - x0) * sx
    y1, y2 = (cy - PATCH_ABOVE * w - y0) * sy, (cy + PATCH_BELOW * w - y0) * sy
    h, wd = luma.shape[:2]
    x1, y1, x2, y2 = max(0, int(x1)), max(0, int(y1)), min(wd, int(np.ceil(x2))), min(h, int(np.ceil(y2)))
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None
    return cv2.resize(luma[y1:y2, x1:x2], PATCH_SIZE, interpolation=cv2.INTER_AREA)  # (24, 32)


def _geometry(faces: Sequence[Face | None]) -> np.ndarray:
    """(N, 4) open, area, jaw, lower_lip of each fitted face (float64); NaN rows without a
    mouth. Mouths of one layout are measured together, as stacked arrays."""
    out = np.full((len(faces), 4), np.nan)
    layouts: dict[tuple[int, int], list[tuple[int, Mouth, float]]] = {}
    for i, face in enumerate(faces):
        mouth = None if face is None else face.mouth
        if mouth is not None:
            layouts.setdefault((len(mouth.upper_inner), len(mouth.lower_outer)), []).append((i, mouth, face.height))
    for rows in layouts.values():
        def stacked(part: str) -> np.ndarray:
            return np.stack([getattr(m, part) for _, m, _ in rows]).astype(np.float64)

        upper, lower = stacked("upper_inner"), stacked("lower_inner")  # (K, n, 2)
        left, right = lower[:, 0], lower[:, -1]  # (K, 2)
        w = np.linalg.norm(right - left, axis=1)  # (K,)
        inner = np.concatenate([upper, lower[:, ::-1]], axis=1)  # closed polygons, (K, 2n, 2)
        x, y = inner[..., 0], inner[..., 1]
        area = 0.5 * np.abs((x * np.roll(y, -1, axis=1)).sum(axis=1) - (y * np.roll(x, -1, axis=1)).sum(axis=1))
        jaw = np.linalg.norm(stacked("chin") - stacked("nose"), axis=1) / np.maximum([h for *_, h in rows], 1.0)
        lip = stacked("lower_outer")[..., 1].mean(axis=1) - (left[:, 1] + right[:, 1]) / 2
        ok = w > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.column_stack([(lower[:, 1:-1, 1] - upper[:, 1:-1, 1]).mean(axis=1) / w, area / w ** 2, jaw, lip / w])
        out[np.array([i for i, *_ in rows])[ok]] = values[ok]
    return out


def _appearance(patches: Mapping[int, np.ndarray | None], n: int) -> np.ndarray:
    """(n, N_APPEARANCE + 1) principal component scores and patch change; NaN rows unfitted."""
    out = np.full((n, N_APPEARANCE + 1), np.nan)
    keys = sorted(k for k, p in patches.items() if k < n and p is not None)
    if len(keys) < N_APPEARANCE + 2:
        return out
    x = np.stack([patches[k].astype(np.float64).ravel() for k in keys])  # (K, P)
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1.0)  # lighting
    centred = x - x.mean(axis=0)
    # The scores on the top principal axes, U_k S_k of centred = U S V^T, from the (K, K) Gram
    # matrix's eigenvectors (U, S^2): a few ms where the (K, P) SVD took 8-20. A component's
    # sign may differ from the SVD's, which no use of these columns can see (the proxy's CCA
    # weights take either sign).
    lam, u = np.linalg.eigh(centred @ centred.T)  # ascending
    top = np.arange(len(lam) - 1, len(lam) - 1 - N_APPEARANCE, -1)
    scores = u[:, top] * np.sqrt(np.maximum(lam[top], 0.0))  # (K, 3)
    change = np.r_[np.nan, np.abs(np.diff(x, axis=0)).mean(axis=1) / np.diff(keys)]  # (K,)
    out[keys, :N_APPEARANCE] = scores
    out[keys, N_APPEARANCE] = change
    return out


def fill(x: np.ndarray) -> np.ndarray:
    """``x`` (N,) or (N, F) with NaNs filled per column by linear interpolation (all-NaN: 0)."""
    x = np.array(x, np.float64, copy=True)
    cols = x.reshape(len(x), -1)  # (N, F) view
    idx = np.arange(len(x))
    for c in range(cols.shape[1]):
        bad = ~np.isfinite(cols[:, c])
        if bad.all():
            cols[:, c] = 0.0
        elif bad.any():
            cols[bad, c] = np.interp(idx[bad], idx[~bad], cols[~bad, c])
    return x


def mouth_features(faces: Sequence[Face | None], patches: Mapping[int, np.ndarray | None] | None = None
                   ) -> np.ndarray:
    """(N, len(MOUTH_NAMES)) mouth measures per frame, NaN-free (unfitted frames interpolated);
    the appearance columns are zero without patches."""
    n = len(faces)
    geo = _geometry(faces)
    app = _appearance(patches or {}, n)
    base = fill(np.concatenate([geo, app], axis=1))  # (N, 8)
    deriv = np.gradient(base[:, 0]) if n > 1 else np.zeros(n)  # (N,)
    return np.column_stack([base, deriv])  # (N, 9)


def speech_envelope(wav: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames,) speech-band RMS (linear) of the 16 kHz audio under each video frame."""
    sos = signal.butter(BAND_ORDER, BAND_HZ, btype="bandpass", fs=SAMPLE_RATE, output="sos")
    wav = np.asarray(wav, np.float64)
    band = signal.sosfiltfilt(sos, wav) if len(wav) > MIN_SAMPLES else np.zeros(len(wav))
    return _per_frame_rms(band, SAMPLE_RATE, fps, n_frames)


def _per_frame_rms(x: np.ndarray, rate: float, fps: float, n_frames: int) -> np.ndarray:
    power = np.concatenate([[0.0], np.cumsum(np.square(x))])  # (N + 1,)
    edges = np.minimum(np.round(np.arange(n_frames + 1) * (rate / fps)).astype(np.int64), len(x))
    counts = np.diff(edges)
    rms = np.sqrt(np.maximum(np.diff(power[edges]), 0) / np.maximum(counts, 1))
    return np.where(counts > 0, rms, 0.0)


def _per_frame_mean(x: np.ndarray, rate: float, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames, F) mean of the rows of ``x`` (rows at ``rate`` Hz) under each video frame;
    frames past the end take the last row."""
    csum = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])  # (T + 1, F)
    edges = np.minimum(np.round(np.arange(n_frames + 1) * (rate / fps)).astype(np.int64), len(x))
    lo, hi = edges[:-1], np.maximum(edges[1:], edges[:-1] + 1)
    lo = np.minimum(lo, len(x) - 1)
    hi = np.minimum(hi, len(x))
    return (csum[hi] - csum[lo]) / np.maximum(hi - lo, 1)[:, None]


def audio_features(wav: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames, len(AUDIO_NAMES)) speech measures under each video frame (see module doc)."""
    wav = np.asarray(wav, np.float64)
    log_rms = np.log(speech_envelope(wav, fps, n_frames) + LOG_FLOOR)
    if len(wav) < SAMPLE_RATE * 2 * FBANK_STEP_S:
        return np.column_stack([log_rms, np.zeros((n_frames, len(AUDIO_NAMES) - 1))])
    energies, _ = fbank(wav, SAMPLE_RATE, winstep=FBANK_STEP_S, nfilt=FBANK_FILTERS)  # (T, 26) at 100 Hz
    logfb = np.log(energies + LOG_FLOOR)
    bands = np.column_stack([logfb[:, a:b].mean(axis=1) for a, b in BAND_GROUPS])  # (T, 2)
    mfcc = dct(logfb, type=2, axis=1, norm="ortho")[:, MFCC_INDEX]  # (T,)
    flux = np.r_[0.0, np.maximum(np.diff(logfb, axis=0), 0).sum(axis=1)]  # (T,)
    energy = logfb.mean(axis=1)  # (T,)
    rows = np.column_stack([bands, mfcc, flux, energy])  # (T, 5)
    frames = _per_frame_mean(rows, 1.0 / FBANK_STEP_S, fps, n_frames)  # (n, 5)
    deltas = np.gradient(frames[:, [4, 2]], axis=0) if n_frames > 1 else np.zeros((n_frames, 2))  # (n, 2)
    return np.column_stack([log_rms, frames[:, :4], deltas])  # (n, 7)


def standardise(x: np.ndarray) -> np.ndarray:
    """Columns of ``x`` (N, F) z-scored; near-constant columns dropped."""
    sd = x.std(axis=0)
    keep = sd > 1e-9 * np.maximum(1.0, np.abs(x).max(axis=0))
    return (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]
