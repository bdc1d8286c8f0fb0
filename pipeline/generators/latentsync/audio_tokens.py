"""LatentSync's audio tokens: whisper encoder features of 16 kHz speech, and per video frame
the 50 x 384 tokens the UNet attends to, exactly as the official ``Audio2Feature`` builds them.

- Features: a log-mel spectrogram of the whole track (whisper's ``log_mel_spectrogram``), cut
  into 30-second windows (3000 mel frames, the last zero-padded); each window goes through the
  encoder, which yields the input embedding and every block's output (5 layers for tiny) at
  50 rows per second; the rows that cover real audio are kept: (T, 5, 384).
- Tokens for frame i: the 10 feature rows from ``c - 4`` to ``c + 5`` where
  ``c = int(i * 50 / fps)`` (clamped to the track), flattened to (50, 384). Any fps works;
  at 25 fps these are the official chunks.
"""

from __future__ import annotations

import functools
import logging
import math
import os

import numpy as np
import torch

from pipeline.errors import InvalidMedia
from pipeline.media.audio import DECODE_TIMEOUT_S, SAMPLE_RATE, mel_filterbank  # 16 kHz: whisper's input too
from pipeline.media.ffmpeg import ffmpeg_output, input_args

from .whisper import WhisperEncoder

log = logging.getLogger(__name__)

N_FFT = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz: 100 mel frames per second
N_MELS = 80
LOG_FLOOR = 1e-10  # power floor before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below the track's peak (80 dB)
FEATURE_RATE = 50  # feature rows per second: 100 mel frames / conv2's stride 2
FRAMES_BEFORE = 2  # video frames of context before a frame (official audio_feat_length [2, 2])
FRAMES_AFTER = 2  # and after
ROWS_PER_FRAME = 2  # feature rows per video frame at 25 fps: 50 / 25
# rows per frame's window: 2 * 2 before, 2 * (2 + 1) from the frame on = 10; x 5 layers = 50 tokens
ROWS_BEFORE = FRAMES_BEFORE * ROWS_PER_FRAME  # 4
ROWS_FROM = (FRAMES_AFTER + 1) * ROWS_PER_FRAME  # 6
INT16_SCALE = 32768.0  # s16 samples to [-1, 1)
ENCODER_BATCH = 4  # 30-second windows per encoder call (about 60 MB of activations each in fp32)


def load_speech(path: str | os.PathLike[str], *, timeout: float = DECODE_TIMEOUT_S) -> np.ndarray:
    """Decode the first audio stream to float32 (N,) 16 kHz mono exactly as whisper's ``load_audio``
    does (ffmpeg ``-ac 1 -ar 16000`` to s16, / 32768), through the project's safe ffmpeg inputs.

    The project's ``pipeline.audio.load_audio`` (channel mean, float output) differs from it by
    up to 2e-3 in the tokens of a 44.1 kHz MP3, so the tokens use this decode. Raises
    InvalidMedia (no samples) and FFmpegError.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    out, _ = ffmpeg_output(["-threads", "0", *input_args(path), "-map", "0:a:0", "-vn", "-f", "s16le",
                            "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"],
                           what=f"decoding the audio of {name}", timeout=timeout, hide=path)
    usable = len(out) // 2 * 2
    wav = np.frombuffer(out[:usable], dtype="<i2").astype(np.float32) / INT16_SCALE  # (N,)
    if wav.size == 0:
        raise InvalidMedia(f"{name}: has no audio samples")
    return wav


@functools.cache
def _mel_filters() -> torch.Tensor:
    """whisper's 80-band mel filterbank (``librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)``,
    computed as librosa does by pipeline.media.audio, without importing librosa). (80, 201)"""
    return torch.from_numpy(mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS).copy())


def log_mel(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """whisper's normalised log-mel spectrogram of 16 kHz mono audio: float32 (80, N // 160)."""
    wav = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(wav, N_FFT, HOP_LENGTH, window=window, return_complex=True)  # (201, N // 160 + 1)
    power = stft[:, :-1].abs() ** 2  # (201, N // 160)
    logs = torch.clamp(_mel_filters() @ power, min=LOG_FLOOR).log10()  # (80, N // 160)
    logs = torch.maximum(logs, logs.max() - DYNAMIC_RANGE)
    return (logs + 4.0) / 4.0


@torch.no_grad()
def encoder_features(encoder: WhisperEncoder, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Features of a whole track: float32 (T, n_audio_layer + 1, width), T = 50 per second.

    Each 30-second window keeps ``(window's mel frames) // 2`` rows, as the official code does.
    """
    mel = log_mel(audio)  # (80, M)
    window = encoder.window_frames  # 3000
    starts = list(range(0, mel.shape[1], window))
    device = encoder.conv1.weight.device
    kept = []
    for first in range(0, len(starts), ENCODER_BATCH):
        batch_starts = starts[first:first + ENCODER_BATCH]
        segments = torch.stack([_padded(mel[:, s:s + window], window) for s in batch_starts])  # (W, 80, 3000)
        layers = encoder(segments.to(device)).float().cpu()  # (W, L + 1, 1500, width)
        for start, out in zip(batch_starts, layers):
            rows = (min(start + window, mel.shape[1]) - start) // 2
            kept.append(out[:, :rows].transpose(0, 1))  # (rows, L + 1, width)
    if not kept:
        return torch.zeros(0, len(encoder.blocks) + 1, encoder.dims.n_audio_state)
    return torch.cat(kept)  # (T, L + 1, width)


def _padded(segment: torch.Tensor, frames: int) -> torch.Tensor:
    """(80, m) -> (80, frames): zeros appended (whisper's ``pad_or_trim`` of the mel)."""
    return torch.nn.functional.pad(segment, (0, frames - segment.shape[1]))


def official_frame_count(n_rows: int, fps: float) -> int:
    """How many frames' tokens the official ``feature2chunks`` yields for ``n_rows`` features:
    frames are added until one starts past the last row (that frame included)."""
    step = FEATURE_RATE / fps  # 50.0 / fps, as the official loop computes it
    i = max(0, math.floor(n_rows / step) - 2)
    while int(i * step) <= n_rows:
        i += 1
    return i + 1


def frame_tokens(features: torch.Tensor, *, fps: float, num_frames: int | None = None) -> torch.Tensor:
    """Tokens per video frame: (N, 10 * (L + 1), width), (N, 50, 384) for whisper tiny.

    ``num_frames`` None: as many frames as the official ``feature2chunks`` gives; otherwise
    exactly that many (rows past the track repeat its last row).
    """
    n = official_frame_count(features.shape[0], fps) if num_frames is None else num_frames
    return tokens_at(features, np.arange(n), fps=fps)


def tokens_at(features: torch.Tensor, frames: np.ndarray | list[int], *, fps: float) -> torch.Tensor:
    """Tokens of the given video frame indices: (len(frames), 10 * (L + 1), width); a frame
    past the track repeats its last rows."""
    if features.shape[0] == 0:
        raise ValueError("no audio features: the track is shorter than one feature row (20 ms)")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    index = np.asarray(frames, dtype=np.int64)
    centres = (index.astype(np.float64) * FEATURE_RATE / fps).astype(np.int64)  # int(i * 50 / fps)
    offsets = np.arange(-ROWS_BEFORE, ROWS_FROM)  # (10,)
    rows = np.clip(centres[:, None] + offsets[None, :], 0, features.shape[0] - 1)  # (N, 10)
    picked = features[torch.from_numpy(rows)]  # (N, 10, L + 1, width)
    return picked.reshape(len(index), -1, features.shape[-1])  # (N, 10 * (L + 1), width)
