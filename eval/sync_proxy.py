"""A weights-free audio-visual sync PROXY (not LSE): mouth opening against speech envelope.

Per video frame: the mouth opening from 68-point landmarks (mean gap between the inner lip
edges divided by the mouth width, so it does not depend on the face's size), and the
speech-band envelope of the audio under that frame (linear RMS of the 300-3000 Hz band).
Frames without a mouth are interpolated; the two series are cross-correlated
(Pearson over the overlapping frames) at lags of -15..+15 frames. The proxy reports the
peak correlation and its offset, with SyncNet's sign: positive when the audio leads the
video (a sound is heard ``offset`` frames before the mouth shows it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import signal

from pipeline.media.audio import SAMPLE_RATE
from pipeline.faces.types import Face

MAX_LAG = 15  # frames each way: 31 lags, SyncNet's search range
BAND_HZ = (300.0, 3000.0)  # speech band of the envelope
BAND_ORDER = 4  # Butterworth order (zero-phase: applied forwards and backwards)
MIN_FRAMES = 2 * MAX_LAG + 10  # frames needed for a meaningful correlation at every lag
MIN_SAMPLES = 256  # audio shorter than this has no usable band envelope (sosfiltfilt's padding)

CONVENTION = {
    "kind": "proxy (not LSE): landmark mouth opening vs speech-band envelope",
    "mouth": "mean inner-lip gap (68-point landmarks 61-63 vs 67-65) / mouth width (60-64), "
             "landmarks by dlib's 68-point predictor at the tracked boxes",
    "audio": f"16 kHz mono, Butterworth band-pass {BAND_HZ[0]:.0f}-{BAND_HZ[1]:.0f} Hz order {BAND_ORDER} "
             f"(zero-phase), RMS per video frame (linear)",
    "lags": f"-{MAX_LAG}..+{MAX_LAG} frames",
    "correlation": "Pearson over overlapping frames; peak = max over lags",
    "offset_sign": "positive = audio leads video (SyncNet's AV offset sign)",
}


def mouth_openings(faces: Sequence[Face | None]) -> np.ndarray:
    """(N,) mouth opening / mouth width per frame; NaN where there is no face or mouth."""
    out = np.full(len(faces), np.nan)
    for i, face in enumerate(faces):
        mouth = None if face is None else face.mouth
        if mouth is not None and mouth.width > 0:
            out[i] = mouth.opening / mouth.width
    return out


def speech_envelope(wav: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames,) speech-band RMS (linear) of the 16 kHz audio under each video frame."""
    sos = signal.butter(BAND_ORDER, BAND_HZ, btype="bandpass", fs=SAMPLE_RATE, output="sos")
    wav = np.asarray(wav, np.float64)
    band = signal.sosfiltfilt(sos, wav) if len(wav) > MIN_SAMPLES else np.zeros(len(wav))
    power = np.concatenate([[0.0], np.cumsum(np.square(band))])  # (N + 1,)
    edges = np.minimum(np.round(np.arange(n_frames + 1) * (SAMPLE_RATE / fps)).astype(np.int64), len(band))
    counts = np.diff(edges)
    rms = np.sqrt(np.maximum(np.diff(power[edges]), 0) / np.maximum(counts, 1))
    return np.where(counts > 0, rms, 0.0)


def _fill(x: np.ndarray) -> np.ndarray:
    """``x`` with NaNs filled by linear interpolation (all-NaN gives zeros)."""
    x = np.asarray(x, np.float64).copy()
    bad = ~np.isfinite(x)
    if bad.all():
        return np.zeros_like(x)
    if bad.any():
        idx = np.arange(len(x))
        x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    return x


def cross_correlate(video: np.ndarray, audio: np.ndarray, *, max_lag: int = MAX_LAG) -> np.ndarray:
    """(2 max_lag + 1,) Pearson correlation of video[i] with audio[i + lag], lag -max_lag..max_lag."""
    n = min(len(video), len(audio))
    out = np.zeros(2 * max_lag + 1)
    for j, lag in enumerate(range(-max_lag, max_lag + 1)):
        v = video[max(0, -lag):n - max(0, lag)]
        a = audio[max(0, lag):n - max(0, -lag)]
        if len(v) < 3 or v.std() == 0 or a.std() == 0:
            continue
        out[j] = float(np.corrcoef(v, a)[0, 1])
    return out


def sync_proxy(openings: np.ndarray, wav: np.ndarray, fps: float) -> tuple[float, int, np.ndarray]:
    """(peak correlation, offset in frames, correlation per lag) of mouth openings and audio.

    Raises ValueError when the clip is too short or no frame has a mouth.
    """
    n = len(openings)
    if n < MIN_FRAMES:
        raise ValueError(f"too short for the sync proxy: {n} frames, need {MIN_FRAMES}")
    if not np.isfinite(openings).any():
        raise ValueError("no frame has mouth landmarks")
    video = _fill(openings)
    audio = speech_envelope(wav, fps, n)
    corr = cross_correlate(video, audio)
    best = int(np.argmax(corr))
    return float(corr[best]), -(best - MAX_LAG), corr
