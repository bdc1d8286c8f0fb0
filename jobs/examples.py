"""Example inputs made on first launch from data shipped with installed packages (no downloads).

- ``photo.png``: the astronaut portrait that ships with scikit-image, cropped to the face.
- ``video.mp4``: that photo as a 3 s, 25 fps clip with a slow camera drift (ffmpeg).
- ``speech.wav``: 3 s of synthetic vowel-like speech (a glottal pulse train through two
  formant resonators, syllable envelope, pauses), 16 kHz mono.
- ``speech2.wav`` and ``suite.yaml`` (:func:`ensure_example_suite`): a second phrase, and the
  example suite shipped as ``jobs/example_suite.yaml`` (3 clips x 3 weights-free settings).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
from scipy import signal
from scipy.io import wavfile
from skimage import data

from pipeline.media.ffmpeg import input_args, run_ffmpeg

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPEECH_S = 3.0
VIDEO_S = 3.0
FPS = 25
PHOTO_CROP = (0, 320, 96, 416)  # rows y0:y1, cols x0:x1 of the 512x512 astronaut photo
VOWELS = ((730, 1090), (270, 2290), (570, 840), (300, 870), (530, 1840))  # F1, F2 in Hz: a i o u e
SYLLABLE_S = 0.22
PAUSE_EVERY = 5  # syllables per phrase; a pause of two syllables follows


def _photo(path: Path) -> None:
    y0, y1, x0, x1 = PHOTO_CROP
    rgb = data.astronaut()[y0:y1, x0:x1]  # (320, 320, 3) RGB
    cv2.imwrite(os.fspath(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def _video(photo: Path, path: Path) -> None:
    drift = "crop=iw-24:ih-24:12+10*sin(2*PI*t/3):12+8*sin(2*PI*t/2)"
    run_ffmpeg([*input_args(photo, pre=("-loop", "1")), "-t", f"{VIDEO_S}", "-r", str(FPS),
                "-vf", drift, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", os.fspath(path)], what="making the example video")


def _resonate(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """Two-pole resonator at ``freq`` Hz with ``bandwidth`` Hz, unit gain at its peak."""
    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * freq / SAMPLE_RATE
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return signal.lfilter([1 - r], a, x)


def speech_samples(seconds: float = SPEECH_S, *, seed: int = 1) -> np.ndarray:
    """Float32 mono at 16 kHz: syllables of synthetic vowels with phrase pauses."""
    rng = np.random.default_rng(seed)
    n_syl = int(seconds / SYLLABLE_S)
    seg = int(SYLLABLE_S * SAMPLE_RATE)
    out = np.zeros(int(seconds * SAMPLE_RATE), np.float64)
    for k in range(n_syl):
        if k % (PAUSE_EVERY + 2) >= PAUSE_EVERY:
            continue  # pause
        f0 = 115 + 25 * rng.random()
        t = np.arange(seg) / SAMPLE_RATE
        pulses = np.zeros(seg)
        pulses[np.arange(0, seg, SAMPLE_RATE / f0).astype(int)] = 1.0  # one glottal pulse per period
        f1, f2 = VOWELS[rng.integers(len(VOWELS))]
        voiced = _resonate(pulses, f1, 90) + 0.6 * _resonate(pulses, f2, 120)
        envelope = np.sin(np.pi * t / SYLLABLE_S) ** 1.5  # opens and closes within the syllable
        out[k * seg:(k + 1) * seg] = voiced * envelope
    peak = float(np.max(np.abs(out))) or 1.0
    return (0.5 * out / peak).astype(np.float32)


def examples_dir(data_dir: str | os.PathLike[str]) -> Path:
    """``<data_dir>/examples``: the only data folder Gradio may serve files from by path."""
    return Path(data_dir) / "examples"


def ensure_examples(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Make the example files under ``<data_dir>/examples`` when missing; return their paths."""
    folder = examples_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"photo": folder / "photo.png", "video": folder / "video.mp4", "audio": folder / "speech.wav"}
    if not paths["photo"].exists():
        _photo(paths["photo"])
    if not paths["video"].exists():
        tmp = folder / "video.partial.mp4"
        _video(paths["photo"], tmp)
        tmp.replace(paths["video"])
    if not paths["audio"].exists():
        _speech(paths["audio"], seed=1)
    log.info("examples ready in %s", folder)
    return {k: os.fspath(v.resolve()) for k, v in paths.items()}


def _speech(path: Path, *, seed: int) -> None:
    pcm = np.clip(speech_samples(seed=seed) * 32767, -32768, 32767).astype(np.int16)
    tmp = path.with_suffix(".partial.wav")
    wavfile.write(os.fspath(tmp), SAMPLE_RATE, pcm)
    tmp.replace(path)


EXAMPLE_SUITE = Path(__file__).with_name("example_suite.yaml")  # shipped with the app


def ensure_example_suite(data_dir: str | os.PathLike[str]) -> str:
    """The examples, a second phrase and ``<data_dir>/examples/suite.yaml`` (a copy of
    :data:`EXAMPLE_SUITE`, whose relative paths resolve there); returns the suite's path."""
    folder = Path(ensure_examples(data_dir)["video"]).parent
    if not (folder / "speech2.wav").exists():
        _speech(folder / "speech2.wav", seed=2)
    suite = folder / "suite.yaml"
    text = EXAMPLE_SUITE.read_text(encoding="utf-8")
    if not suite.exists() or suite.read_text(encoding="utf-8") != text:
        suite.write_text(text, encoding="utf-8")
    return os.fspath(suite)
