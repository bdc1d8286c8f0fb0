"""Silence: where the speech gate hears none, the source mouth stays (LatentSync users report the
mouth moving in silence: LatentSync issues #28, #221).

The gate is the baseline generator's (:func:`pipeline.generators.baseline.mel_level_db` and its
:class:`~pipeline.generators.baseline.MouthDriver` on Wav2Lip's mel windows of the job's speech): a
frame is silent where the gate shuts the mouth. The gate also shuts between syllables, so
only runs of at least ``SILENCE_MIN_S`` count. Inside such a run the source's weight rises from 0
to 1 over ``RAMP_FRAMES`` frames from each edge: the generated mouth blends towards the source and
back out again instead of jumping. A frame of weight 1 is the source itself (no UNet work).
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.generators.baseline import MouthDriver, mel_level_db
from pipeline.media import audio as audio_mod

log = logging.getLogger(__name__)

SILENCE_MIN_S = 0.2  # shorter gaps are pauses inside speech: the model's mouth stays (5 frames at 25 fps)
RAMP_FRAMES = 3  # frames over which the mouth blends towards the source at each edge of a silence


def output_frames(samples: int, fps: float) -> int:
    """Frames of the output for ``samples`` of 16 kHz speech (the run loop's rule: the audio's length)."""
    return max(1, round(samples / audio_mod.SAMPLE_RATE * fps))


def silent_frames(wav: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """bool (n_frames,): True where the speech gate keeps the mouth shut under frame i."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    mels = audio_mod.mel_chunks(audio_mod.melspectrogram(np.asarray(wav, np.float32)), fps, n_frames)  # (n, 80, 16)
    return MouthDriver(fps).gate(mel_level_db(mels, fps))


def keep_weights(silent: np.ndarray, fps: float, *, min_s: float = SILENCE_MIN_S,
                 ramp: int = RAMP_FRAMES) -> np.ndarray:
    """float32 (n,) in [0, 1]: how much of the source each frame shows. 0 in speech and in silences
    shorter than ``min_s``; in a longer silence min(1, d / (ramp + 1)), d = frames to the nearest
    frame of speech (the clip's ends count as silence)."""
    silent = np.asarray(silent, bool)
    n = len(silent)
    keep = silent.copy()
    shortest = max(1, round(min_s * fps))
    start = 0
    while start < n:  # drop the runs of silence shorter than the minimum
        stop = start
        while stop < n and silent[stop] == silent[start]:
            stop += 1
        if silent[start] and stop - start < shortest:
            keep[start:stop] = False
        start = stop
    distance = np.full(n, n + ramp + 1, np.int64)  # frames to the nearest speech frame
    for order in (range(n), range(n - 1, -1, -1)):
        last = None
        for i in order:
            if not keep[i]:
                last, distance[i] = i, 0
            elif last is not None:
                distance[i] = min(distance[i], abs(i - last))
    return np.minimum(1.0, distance / (ramp + 1)).astype(np.float32)


def silence_weights(wav: np.ndarray, fps: float) -> np.ndarray:
    """:func:`keep_weights` of the speech ``wav`` (16 kHz mono float) for every output frame."""
    weights = keep_weights(silent_frames(wav, fps, output_frames(len(wav), fps)), fps)
    log.info("latentsync: %d of %d frames keep the source mouth (silence)", int((weights >= 1).sum()), len(weights))
    return weights
