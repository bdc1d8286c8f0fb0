"""Audio: decode any speech track to 16 kHz mono, Wav2Lip's mel spectrogram, and the
per-video-frame mel windows and loudness the generators consume.

The mel spectrogram reproduces Wav2Lip's ``audio.py`` with its ``hparams.py`` values
exactly (a differential test checks it against that code, run with the stft padding of
librosa 0.7, the version Wav2Lip pinned), because the published checkpoints were trained on it.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from pipeline.errors import InvalidMedia
from pipeline.media.ffmpeg import ffmpeg_output, input_args
from pipeline.media.probe import MediaInfo, probe, require_stream

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz, what Wav2Lip and SyncNet expect
N_FFT = 800  # 50 ms at 16 kHz
HOP_SIZE = 200  # 12.5 ms at 16 kHz
WIN_SIZE = 800  # 50 ms at 16 kHz
N_MELS = 80
MEL_BINS = N_MELS  # mel channels of one window (Wav2Lip's and the baseline's input)
MEL_FPS = 80  # mel columns per second: 16000 / hop 200
MEL_STEP = 16  # mel columns per 5-frame window at 25 fps: 0.2 s * 80
FMIN = 55  # Hz
FMAX = 7600  # Hz, below Nyquist (8000)
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20
MIN_LEVEL_DB = -100
MAX_ABS_VALUE = 4.0  # symmetric normalisation to [-4, 4]
# librosa < 0.10's stft default, which Wav2Lip (librosa 0.7) and its checkpoints used;
# librosa >= 0.10 pads with zeros instead, which changes the first and last 2 columns
STFT_PAD_MODE = "reflect"
MIN_AMPLITUDE = 1e-5  # 10 ** (MIN_LEVEL_DB / 20): the amp_to_db floor
DECODE_TIMEOUT_S = 120.0  # a 600 s track decodes in about a second


def load_audio(path: str | os.PathLike[str], *, info: MediaInfo | None = None,
               timeout: float = DECODE_TIMEOUT_S) -> np.ndarray:
    """Decode the first audio stream of any file ffmpeg reads to float32 (N,) mono 16 kHz.

    Channels are averaged (librosa's ``to_mono``, which Wav2Lip's ``load_wav`` uses), so a
    full-scale stereo track stays within [-1, 1]; ffmpeg's plain ``-ac 1`` would sum the
    channels at -3 dB each and reach 1.414. Samples are clipped to [-1, 1] (decoded MP3/AAC
    may overshoot slightly). ``info`` skips the probe when the caller has one. Raises
    InvalidMedia (no audio stream, no samples) and FFmpegError (decoding failed).
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    info = info or probe(path)
    require_stream(info, "audio")
    out, _ = ffmpeg_output([*input_args(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
                            "-af", _mono_16k_filter(info.audio.channels), "-ac", "1", "-f", "f32le", "pipe:1"],
                           what=f"decoding the audio of {name}", timeout=timeout, hide=path)
    usable = len(out) // 4 * 4
    wav = np.frombuffer(out[:usable], dtype="<f4").astype(np.float32)  # (N,), a writable copy
    if wav.size == 0:
        raise InvalidMedia(f"{name}: has no audio samples")
    if not np.isfinite(wav).all():  # the output mux would fail on them after all the work
        raise InvalidMedia(f"{name}: the audio contains NaN or infinite samples (a broken float WAV?)")
    np.clip(wav, -1.0, 1.0, out=wav)
    return wav


def _mono_16k_filter(channels: int) -> str:
    """ffmpeg audio filter: the mean of ``channels`` channels, resampled to 16 kHz.

    Where the probe could not count the channels (0), ffmpeg's own downmix is used with
    its matrix normalised to unit gain (``rematrix_maxval=1``): for stereo that is the
    mean too, for surround layouts a weighted mean.
    """
    resample = f"aresample={SAMPLE_RATE}"
    if channels == 1:
        return resample
    if channels < 1:
        return f"{resample}:ochl=mono:rematrix_maxval=1"
    gain = 1.0 / channels
    terms = "+".join(f"{gain:.10g}*c{i}" for i in range(channels))
    return f"pan=mono|c0={terms},{resample}"


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram of 16 kHz audio: float32 (80, T), T = N // 200 + 1.

    Empty or all-zero audio gives the silence floor (-4) everywhere, never NaN.
    """
    wav = np.asarray(wav, np.float64)
    if wav.size == 0:
        wav = np.zeros(1)  # one silent sample: a single silent column, as for any N < 200
    emphasized = wav.copy()  # scipy.signal.lfilter([1, -PREEMPHASIS], [1], wav), the same floats
    emphasized[1:] -= PREEMPHASIS * wav[:-1]
    spec = _stft(emphasized)  # (401, T)
    mel = _mel_basis() @ np.abs(spec)  # (80, T)
    db = 20 * np.log10(np.maximum(MIN_AMPLITUDE, mel)) - REF_LEVEL_DB
    normed = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(normed, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def _stft(wav: np.ndarray) -> np.ndarray:
    """librosa.stft(y, n_fft=N_FFT, hop_length=HOP_SIZE, win_length=WIN_SIZE, center=True,
    pad_mode=STFT_PAD_MODE) in plain numpy: identical values, without librosa's first-call
    JIT compile (seconds per process)."""
    padded = np.pad(wav, (N_FFT // 2, N_FFT // 2), mode=STFT_PAD_MODE)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_SIZE]  # (T, N_FFT), a view
    return np.fft.rfft(frames * _window(), axis=1).T  # (T, 401) -> (401, T)


@functools.cache
def _window() -> np.ndarray:
    """scipy.signal.get_window("hann", WIN_SIZE, fftbins=True): the periodic Hann librosa uses."""
    angle = np.linspace(-np.pi, np.pi, WIN_SIZE + 1)  # scipy's symmetric window, one longer
    return (0.5 + 0.5 * np.cos(angle))[:-1]  # (800,): the same floats as scipy


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """librosa.hz_to_mel(htk=False): Slaney's scale, linear to 1 kHz, logarithmic above."""
    mels = hz / _MEL_F_SP
    log_t = hz >= _MEL_MIN_LOG_HZ
    mels[log_t] = _MEL_MIN_LOG_HZ / _MEL_F_SP + np.log(hz[log_t] / _MEL_MIN_LOG_HZ) / _MEL_LOGSTEP
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """librosa.mel_to_hz(htk=False), the inverse of :func:`_hz_to_mel`."""
    hz = _MEL_F_SP * mels
    min_log_mel = _MEL_MIN_LOG_HZ / _MEL_F_SP
    log_t = mels >= min_log_mel
    hz[log_t] = _MEL_MIN_LOG_HZ * np.exp(_MEL_LOGSTEP * (mels[log_t] - min_log_mel))
    return hz


_MEL_F_SP = 200.0 / 3  # Hz per mel below 1 kHz (Slaney)
_MEL_MIN_LOG_HZ = 1000.0
_MEL_LOGSTEP = np.log(6.4) / 27.0


@functools.cache
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax) (Slaney
    scale and norm, float32) in plain numpy, the same expressions in the same order:
    importing librosa costs about a second per process (numba). (n_mels, n_fft // 2 + 1);
    cached, read-only."""
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)  # (n_fft // 2 + 1,)
    edges = _hz_to_mel(np.array([fmin, sr / 2.0 if fmax is None else fmax], np.float64))
    mel_f = _mel_to_hz(np.linspace(edges[0], edges[1], n_mels + 2))  # (n_mels + 2,) band edges in Hz
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)  # (n_mels + 2, n_fft // 2 + 1)
    weights = np.zeros((n_mels, n_fft // 2 + 1), np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]  # Slaney norm
    weights.setflags(write=False)
    return weights


def _mel_basis() -> np.ndarray:
    """Wav2Lip's filterbank: :func:`mel_filterbank` at its rate, FFT size, bands and range. (80, 401)"""
    return mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, FMIN, FMAX)


def mel_chunks(mel: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """The mel window of each video frame, Wav2Lip's rule: float32 (n_frames, 80, 16).

    Frame i starts at column int(i * (80 / fps)) (Wav2Lip's exact float expression) and
    takes 16 columns; where that runs past the end, the last 16 columns are used. A mel
    shorter than 16 columns is first padded on the right with silence (-4).
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    mel = np.asarray(mel, np.float32)
    if mel.shape[1] < MEL_STEP:
        pad = np.full((mel.shape[0], MEL_STEP - mel.shape[1]), -MAX_ABS_VALUE, np.float32)
        mel = np.concatenate([mel, pad], axis=1)  # (80, 16)
    t = mel.shape[1]
    starts = (np.arange(n_frames) * (float(MEL_FPS) / fps)).astype(np.int64)
    starts = np.minimum(starts, t - MEL_STEP)
    idx = starts[:, None] + np.arange(MEL_STEP)[None, :]  # (n_frames, 16)
    return np.ascontiguousarray(mel[:, idx].transpose(1, 0, 2))  # (80, n, 16) -> (n, 80, 16)
