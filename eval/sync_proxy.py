"""A weights-free audio-visual sync PROXY (not LSE): mouth measures against speech measures.

Per video frame, a dozen mouth measures (landmark geometry, the mouth patch's appearance and
change, their derivatives) and a dozen speech measures (band envelopes, onsets, MFCCs and
deltas): ``eval.proxy_features``. At each lag of -MAX_LAG..+MAX_LAG frames, one
regularised canonical correlation (CCA) combines each side, FITTED PER CLIP AND PER LAG ON
HELD-OUT FOLDS: the overlapping frames are cut into FOLDS contiguous blocks; for each block,
the combination is fitted on the other blocks (less GUARD frames either side of it) and
applied to the block. The lag's correlation is the Pearson correlation of the held-out
projections, so a lag cannot look better by fitting its own noise, and no lag borrows a
combination fitted at another.

The peak lag gives the offset, with SyncNet's sign (positive when a sound is heard
``offset`` frames before the mouth shows it), after subtracting the physiological lead of
the mouth over the sound measured by the calibration (``eval/proxy_calibration.json``;
``python -m eval calibrate-proxy``; docs/PROXY_CALIBRATION.md). Slow drifts (head pose,
light, loudness) correlate at every lag, so every measure first loses its centred moving
average over HIGHPASS_S seconds.

The confidence, like LSE-C, says how distinct the peak is, as a permutation z: the held-out
projections at the peak lag are correlated again with the audio's projection circularly
shifted by every shift beyond the lag range, and the confidence is (peak correlation - mean
of those) / their standard deviation. Below the calibrated threshold the offset is not
reported (:attr:`ProxyResult.offset` is None; the score says why, with the figures).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from eval.proxy_features import (AUDIO_NAMES, MOUTH_NAMES, MOVEMENT_FLOOR, MouthFrames, audio_features,
                                 fill, standardise)
from eval.results import PROXY_METRICS, Score, Scores, nulls
from pipeline.faces.types import Face
from pipeline.options import SPEECH_ENERGY_MODELS

MAX_LAG = 15  # frames each way: 31 lags, SyncNet's search range
MIN_FRAMES = 2 * MAX_LAG + 10  # frames needed for a meaningful correlation at every lag
FOLDS = 5  # contiguous held-out blocks per lag
GUARD = 3  # frames left out of the training set either side of the held-out block
RIDGE = 1.0  # added to each (standardised) feature's variance before whitening
HIGHPASS_S = 1.0  # seconds of the centred moving average removed from every measure
NULL_MIN_SHIFT = MAX_LAG + 1  # circular shifts of the permutation null: beyond the lag range
MIN_NULL_SHIFTS = 50  # fewer null shifts estimate the confidence too loosely to report an offset
MIN_CONFIDENT_FRAMES = 2 * NULL_MIN_SHIFT + MIN_NULL_SHIFTS - 1  # 81 frames: 3.2 s at 25 fps
CALIBRATION_FILE = Path(__file__).with_name("proxy_calibration.json")
SAME_ENERGY_CAUTION = ("the {model} generator drives the mouth from the same speech energy this proxy "
                       "reads, so its proxy scores are high by construction: compare it with other "
                       "settings on LSE or by eye, never on the proxy alone")

CONVENTION = {
    "kind": "proxy (not LSE): mouth measures vs speech measures, held-out CCA per lag",
    "mouth": "68-point landmarks (dlib at the tracked boxes): " + ", ".join(MOUTH_NAMES)
             + " (eval/proxy_features.py)",
    "audio": "16 kHz mono: " + ", ".join(AUDIO_NAMES) + " (eval/proxy_features.py)",
    "lags": f"-{MAX_LAG}..+{MAX_LAG} frames",
    "correlation": f"regularised CCA (ridge {RIDGE} on standardised features) fitted per lag on "
                   f"{FOLDS} contiguous folds (guard {GUARD} frames); Pearson of the held-out "
                   "projections; peak = max over lags",
    "highpass": f"every measure less its centred {HIGHPASS_S:g} s moving average",
    "confidence": "permutation z at the peak lag: (held-out correlation - mean) / sd of the held-out "
                  f"projections' correlations with the audio's circularly shifted by {NULL_MIN_SHIFT}.."
                  f"N-{NULL_MIN_SHIFT} frames",
    "offset_sign": "positive = audio leads video (SyncNet's AV offset sign)",
    "offset_reported": f"when the confidence reaches the calibrated threshold, the clip has at least "
                       f"{MIN_CONFIDENT_FRAMES} frames and the mouth moves (std of open >= {MOVEMENT_FLOOR})",
}


@dataclass(frozen=True)
class Calibration:
    """What the calibration run fixed: the confidence threshold and the mouth's lead."""

    threshold: float  # confidence at and above which the offset is reported
    lead_s: float  # the raw offset of in-sync clips, seconds (negative: the mouth moves before the sound)
    source: str  # where these came from (file and date)


@functools.lru_cache(maxsize=1)
def calibration() -> Calibration:
    """The calibration in CALIBRATION_FILE (written by ``python -m eval calibrate-proxy --write``)."""
    data = json.loads(CALIBRATION_FILE.read_text())
    return Calibration(float(data["threshold"]), float(data["lead_s"]),
                       f"{CALIBRATION_FILE.name} ({data.get('date', 'undated')})")


@dataclass(frozen=True)
class ProxyResult:
    """The proxy of one clip against one speech track."""

    corr: float  # held-out canonical correlation at the peak
    peak_offset: int  # the peak's offset in frames, lead-corrected, whatever the confidence
    raw_offset: float  # -(peak lag) to a fraction of a frame, before the lead correction
    confidence: float
    threshold: float
    curve: np.ndarray  # (2 MAX_LAG + 1,) held-out correlation at lag -MAX_LAG..MAX_LAG (video i vs audio i + lag)
    still: bool = False  # the mouth does not move: no offset can be read
    frames: int = MIN_CONFIDENT_FRAMES  # frames compared

    @property
    def confident(self) -> bool:
        return not self.still and self.frames >= MIN_CONFIDENT_FRAMES and self.confidence >= self.threshold

    @property
    def offset(self) -> int | None:
        """The offset when the confidence reaches the threshold, else None."""
        return self.peak_offset if self.confident else None

    def low_confidence_reason(self) -> str:
        """Why :attr:`offset` is None, with the figures."""
        why = "the mouth does not move; " if self.still else ""
        if self.frames < MIN_CONFIDENT_FRAMES:
            why += f"{self.frames} frames, too few for a confident offset (need {MIN_CONFIDENT_FRAMES}); "
        return (f"n/a (low confidence: {why}{self.confidence:.2f} < {self.threshold:.2f}; "
                f"the peak would be {self.peak_offset:+d} frames)")


def mouth_openings(faces: Sequence[Face | None]) -> np.ndarray:
    """(N,) mouth opening / mouth width per frame; NaN where there is no face or mouth."""
    out = np.full(len(faces), np.nan)
    for i, face in enumerate(faces):
        mouth = None if face is None else face.mouth
        if mouth is not None and mouth.width > 0:
            out[i] = mouth.opening / mouth.width
    return out


def _overlap(video: np.ndarray, audio: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows video[i] and audio[i + lag] over the frames both have."""
    n = min(len(video), len(audio))
    return video[max(0, -lag):n - max(0, lag)], audio[max(0, lag):n - max(0, -lag)]


def cross_correlate(video: np.ndarray, audio: np.ndarray, *, max_lag: int = MAX_LAG) -> np.ndarray:
    """(2 max_lag + 1,) Pearson correlation of video[i] with audio[i + lag], lag -max_lag..max_lag
    (one series each: the proxy's first form, kept for comparisons)."""
    out = np.zeros(2 * max_lag + 1)
    for j, lag in enumerate(range(-max_lag, max_lag + 1)):
        v, a = _overlap(video, audio, lag)
        if len(v) >= 3 and v.std() > 0 and a.std() > 0:
            out[j] = float(np.corrcoef(v, a)[0, 1])
    return out


def highpass(x: np.ndarray, fps: float) -> np.ndarray:
    """``x`` (N, F) less its centred moving average over HIGHPASS_S seconds (odd, reflected ends)."""
    k = max(3, int(round(HIGHPASS_S * fps)) | 1)
    if len(x) <= k:
        return x
    pad = np.pad(x, ((k // 2, k // 2), (0, 0)), mode="reflect")  # (N + k - 1, F)
    c = np.cumsum(np.concatenate([np.zeros((1, x.shape[1])), pad]), axis=0)  # (N + k, F)
    return x - (c[k:] - c[:-k]) / k


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    """C^(-1/2) of each symmetric matrix in the stack ``c`` (k, F, F)."""
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-12))[:, None, :]) @ np.swapaxes(v, 1, 2)


def heldout_projections(v: np.ndarray, a: np.ndarray, *, folds: int = FOLDS, guard: int = GUARD,
                        ridge: float = RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """(n,), (n,): each row's CCA projection of ``v`` and ``a`` by weights fitted without its
    fold (and GUARD rows either side), in units of the training projections' spread."""
    return _heldout_many([(v, a)], folds=folds, guard=guard, ridge=ridge)[0]


def _heldout_many(pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, folds: int = FOLDS, guard: int = GUARD,
                  ridge: float = RIDGE) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`heldout_projections` of each (v, a) pair (all with the same columns). The
    first canonical weights of every (pair, fold) are found in stacked eighs
    (each matrix by the same LAPACK routine as alone, without a call's overhead each):
    ridged whitening Kv = (Cvv + ridge I)^(-1/2), Ka likewise, and the top singular
    vectors u, w of M = Kv Cva Ka give the weights Kv u and Ka w (w: the top eigenvector of
    M^T M, u along M w: a weight's scale cancels in the projections, each divided by its spread)."""
    folds_of: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    cvv, caa, cva = [], [], []
    for k, (v, a) in enumerate(pairs):
        n = len(v)
        for block in np.array_split(np.arange(n), folds):
            train = np.ones(n, bool)
            train[max(0, block[0] - guard):block[-1] + 1 + guard] = False
            vt, at = v[train], a[train]
            mv, ma = vt.mean(axis=0), at.mean(axis=0)
            vc, ac = vt - mv, at - ma
            m = len(vc)
            cvv.append(vc.T @ vc / m)
            caa.append(ac.T @ ac / m)
            cva.append(vc.T @ ac / m)
            folds_of.append((k, block, vc, ac, mv, ma))
    kv = _inv_sqrt(np.stack(cvv) + ridge * np.eye(cvv[0].shape[0]))
    ka = _inv_sqrt(np.stack(caa) + ridge * np.eye(caa[0].shape[0]))
    m = kv @ np.stack(cva) @ ka  # (k, Fv, Fa)
    top = np.linalg.eigh(np.swapaxes(m, 1, 2) @ m)[1][:, :, -1:]  # (k, Fa, 1): the top right singular vector
    wv = (kv @ m @ top)[:, :, 0]  # M w: the top left singular vector times its singular value
    wa = (ka @ top)[:, :, 0]
    out = [(np.empty(len(v)), np.empty(len(v))) for v, _ in pairs]
    for j, (k, block, vc, ac, mv, ma) in enumerate(folds_of):
        (v, a), (pv, pa) = pairs[k], out[k]
        tv = vc @ wv[j]  # the training rows' projection
        # A canonical pair's sign is arbitrary (LAPACK's choice, fold by fold); fixed here so
        # that the mouth's projection rises with the first mouth measure (the opening), or
        # the blocks' signs would differ at random, and with them the circularly shifted
        # correlations of the confidence's null.
        sign = -1.0 if tv @ vc[:, 0] < 0 else 1.0
        sv, sa = tv.std(), (ac @ wa[j]).std()
        pv[block] = (v[block] - mv) @ wv[j] * (sign / (sv + 1e-12))
        pa[block] = (a[block] - ma) @ wa[j] * (sign / (sa + 1e-12))
    return out


def _pearson(pv: np.ndarray, pa: np.ndarray) -> float:
    if pv.std() == 0 or pa.std() == 0:
        return 0.0
    return float(np.corrcoef(pv, pa)[0, 1])


def heldout_correlation(v: np.ndarray, a: np.ndarray, **fit: float) -> float:
    """Pearson correlation of the held-out CCA projections of paired rows of ``v`` and ``a``."""
    return _pearson(*heldout_projections(v, a, **fit))


def _lag_fits(video: np.ndarray, audio: np.ndarray, max_lag: int = MAX_LAG
              ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """:func:`lag_curve` and each lag's held-out projections (pv, pa), in the curve's order."""
    fits = _heldout_many([_overlap(video, audio, lag) for lag in range(-max_lag, max_lag + 1)])
    return np.array([_pearson(pv, pa) for pv, pa in fits]), fits


def lag_curve(video: np.ndarray, audio: np.ndarray, *, max_lag: int = MAX_LAG) -> np.ndarray:
    """(2 max_lag + 1,) held-out correlation of video[i] with audio[i + lag] (rows are frames)."""
    return _lag_fits(video, audio, max_lag)[0]


def shift_null_z(pv: np.ndarray, pa: np.ndarray, min_shift: int = NULL_MIN_SHIFT) -> float:
    """z of corr(pv, pa) against corr(pv, pa circularly shifted by min_shift..n - min_shift)."""
    n = len(pv)
    if n < 2 * min_shift + 2:
        return 0.0
    x, y = (pv - pv.mean()) / (pv.std() + 1e-12), (pa - pa.mean()) / (pa.std() + 1e-12)
    circ = np.fft.irfft(np.conj(np.fft.rfft(x)) * np.fft.rfft(y), n) / n  # (n,) circ[k] = mean x[i] y[i+k]
    null = circ[min_shift:n - min_shift + 1]
    return float((circ[0] - null.mean()) / (null.std() + 1e-12))


def _peak(curve: np.ndarray) -> float:
    """The peak's lag index, refined to a fraction of a frame by a parabola through it."""
    j = int(np.argmax(curve))
    if 0 < j < len(curve) - 1:
        y0, y1, y2 = curve[j - 1:j + 2]
        den = y0 - 2 * y1 + y2
        if den < 0:
            return j + 0.5 * (y0 - y2) / den
    return float(j)


def sync_proxy(mouth: np.ndarray, wav: np.ndarray, fps: float, *,
               calib: Calibration | None = None, audio: np.ndarray | None = None) -> ProxyResult:
    """The proxy of per-frame mouth measures against ``wav`` (16 kHz mono) at ``fps``.

    ``mouth`` is (N, F) :func:`eval.proxy_features.mouth_features` or (N,) openings (NaN:
    no mouth; interpolated). ``audio``: ``audio_features(wav, fps, N)`` computed ahead, used
    when it has the N rows. Raises ValueError when the clip is too short or no frame has a mouth.
    """
    n = len(mouth)
    if n < MIN_FRAMES:
        raise ValueError(f"too short for the sync proxy: {n} frames, need {MIN_FRAMES}")
    mouth = np.asarray(mouth, np.float64).reshape(n, -1)  # (N, F)
    if not np.isfinite(mouth).any():
        raise ValueError("no frame has mouth landmarks")
    calib = calib or calibration()
    mouth = fill(mouth)
    still = float(mouth[:, 0].std()) < MOVEMENT_FLOOR
    video = standardise(highpass(mouth, fps))
    if audio is None or len(audio) != n:
        audio = audio_features(wav, fps, n)
    audio = standardise(highpass(audio, fps))
    if video.shape[1] == 0 or audio.shape[1] == 0:
        curve, conf = np.zeros(2 * MAX_LAG + 1), 0.0
    else:
        curve, fits = _lag_fits(video, audio)
        conf = shift_null_z(*fits[int(np.argmax(curve))])  # the peak lag's held-out projections
    raw = -(_peak(curve) - MAX_LAG)
    return ProxyResult(float(curve.max()), int(round(raw - calib.lead_s * fps)), raw, conf,
                       calib.threshold, curve, still=still, frames=n)


def proxy_scores(mouths: MouthFrames, reason: str | None, wav: np.ndarray | None,
                 landmark_frames: str, *, audio: np.ndarray | None = None) -> list[Score]:
    """sync_proxy_corr, sync_proxy_offset and sync_proxy_conf of ``mouths`` against ``wav`` (or
    nulls with ``reason``); the offset is null, with the confidence in its reason, below the
    calibrated threshold. ``landmark_frames`` says how scoring fitted the mouths; ``audio``:
    ``wav``'s speech measures computed ahead, if any (:func:`sync_proxy`)."""
    calib = calibration()
    conv = {**CONVENTION, "fps": mouths.fps, "threshold": calib.threshold, "lead_s": calib.lead_s,
            "calibration": calib.source, "landmark_frames": landmark_frames}
    if reason is not None or wav is None:
        return nulls(PROXY_METRICS, reason or "n/a (no audio)", conv)
    try:
        res = sync_proxy(mouths.features(), wav, mouths.fps, calib=calib, audio=audio)
    except ValueError as exc:
        return nulls(PROXY_METRICS, f"n/a ({exc})", conv)
    offset_conv = {**conv, "unit": "frames, + = audio leads", "peak_offset": res.peak_offset}
    offset = Score("sync_proxy_offset", float(res.peak_offset), None, offset_conv) if res.confident else \
        Score("sync_proxy_offset", None, res.low_confidence_reason(), offset_conv)
    return [Score("sync_proxy_corr", res.corr, None, conv), offset,
            Score("sync_proxy_conf", res.confidence, None, {**conv, "unit": "permutation z of the peak lag"})]


def proxy_caution(model: str | None) -> str | None:
    """The caution that goes with the proxy scores of a video made by ``model``, or None."""
    return SAME_ENERGY_CAUTION.format(model=model) if model in SPEECH_ENERGY_MODELS else None


def with_caution(scores: Scores, model: str | None) -> Scores:
    """``scores`` with the proxy's conventions carrying :func:`proxy_caution` of ``model``."""
    caution = proxy_caution(model)
    if caution is None:
        return scores
    marked = tuple(replace(s, convention={**s.convention, "caution": caution}) if s.metric in PROXY_METRICS
                   else s for s in scores.scores)
    return replace(scores, scores=marked)
