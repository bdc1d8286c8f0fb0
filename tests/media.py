"""Small synthetic media for tests: a real face photo shipped with scikit-image, moved a
little per frame, and speech-like audio (voiced bursts and silences). Nothing is read
from the network and nothing is committed: every file is made in a tmp folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
from scipy.io import wavfile
from skimage import data

from pipeline.media.ffmpeg import ffmpeg_exe

FACE_SIZE = 384  # px, square frames; the face is ~125 px wide at this size
FACE_CROP = (104, 8, 272)  # x0, y0, side of the astronaut photo's head-and-shoulders crop
# The sync proxy of face_video(seconds=2.0) muxed with speech_like(3.0) (its mouth does not
# move: landmark jitter only): measured values that pin the computation, not a meaning.
STILL_FACE_PROXY_CORR = 0.478
STILL_FACE_PROXY_CONF = 3.84


def face_frame(i: int, *, size: int = FACE_SIZE) -> np.ndarray:
    """Frame i (BGR uint8): the astronaut photo shifted a few pixels along a slow circle."""
    x0, y0, side = FACE_CROP
    rgb = data.astronaut()[y0:y0 + side, x0:x0 + side]  # (272, 272, 3) RGB
    img = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (size, size), interpolation=cv2.INTER_AREA)
    dx, dy = 4 * np.sin(i / 7.0), 3 * np.cos(i / 9.0)
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT)


# libx264 with three B-frames between references and no B-pyramid, no scene cuts: every
# B-frame is a non-reference picture (pipeline.media.noref), every I/P-frame a reference
X264_B_FRAMES = ["-c:v", "libx264", "-preset", "veryfast", "-threads", "1", "-pix_fmt", "yuv420p",
                 "-x264-params", "bframes=3:b-adapt=0:b-pyramid=none:scenecut=0"]


def write_video(path: Path, frames: list[np.ndarray] | np.ndarray, *, fps: float = 25.0,
                audio: Path | None = None, extra: list[str] | None = None) -> Path:
    """Encode BGR frames to ``path`` through an ffmpeg pipe (libx264 unless ``extra`` says)."""
    h, w = frames[0].shape[:2]
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    if audio is not None:
        cmd += ["-i", os.fspath(audio), "-shortest", "-c:a", "aac"]
    cmd += extra if extra is not None else ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    cmd.append(os.fspath(path))
    subprocess.run(cmd, input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames), check=True)
    return path


def face_video(path: Path, *, seconds: float = 2.0, fps: float = 25.0, audio: Path | None = None) -> Path:
    n = int(round(seconds * fps))
    return write_video(path, [face_frame(i) for i in range(n)], fps=fps, audio=audio)


def speech_like(seconds: float, *, sr: int = 16000, seed: int = 0,
                pattern: tuple[tuple[float, bool], ...] | None = None) -> np.ndarray:
    """Float32 mono in [-1, 1]: voiced bursts (harmonics of a gliding f0 under a ~4 Hz
    syllable envelope) separated by silences. ``pattern`` is (duration_s, voiced) pairs,
    repeated to fill ``seconds``; the default is 0.8 s voiced / 0.5 s silent."""
    rng = np.random.default_rng(seed)
    pattern = pattern or ((0.8, True), (0.5, False))
    n = int(seconds * sr)
    out = np.zeros(n, np.float32)
    t0, k = 0, 0
    while t0 < n:
        dur, voiced = pattern[k % len(pattern)]
        m = min(int(dur * sr), n - t0)
        if voiced and m > 0:
            t = np.arange(m) / sr
            f0 = 130 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
            phase = 2 * np.pi * np.cumsum(f0) / sr
            sig = sum(np.sin(h * phase) / h for h in range(1, 12))
            env = np.clip(np.sin(np.pi * t * 4.0 / 1.0 + rng.uniform(0, 1)) ** 2, 0, 1)
            env *= np.minimum(1, np.minimum(t, t[::-1]) / 0.03)  # 30 ms fades
            out[t0:t0 + m] = 0.3 * sig * env + 0.003 * rng.standard_normal(m)
        t0 += m
        k += 1
    return out


def write_wav(path: Path, samples: np.ndarray, *, sr: int = 16000) -> Path:
    pcm = np.clip(samples * 32767, -32768, 32767).astype(np.int16)
    wavfile.write(os.fspath(path), sr, pcm)
    return path


def frame_levels(wav: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """RMS level in dBFS of the 16 kHz audio under each video frame: float32 (n_frames,);
    -100 where there is no signal or no audio. An oracle of the tests, independent of the
    generators' own mel levels."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    power = np.concatenate([[0.0], np.cumsum(np.square(wav, dtype=np.float64))])  # (N + 1,)
    edges = np.minimum((np.arange(n_frames + 1) * (16000 / fps)).round().astype(np.int64), len(wav))
    counts = np.diff(edges)
    energy = np.diff(power[edges])
    rms = np.sqrt(np.maximum(energy, 0) / np.maximum(counts, 1))
    db = 20 * np.log10(np.maximum(rms, 1e-5))
    return np.where(counts > 0, db, -100.0).astype(np.float32)
