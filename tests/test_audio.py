"""load_audio / melspectrogram / mel_chunks, including differential tests
against Wav2Lip's own audio code (the PyPI package `lipsync`)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import librosa
import numpy as np
import pytest
from scipy.io import wavfile

import media
from required import skip_or_fail
from pipeline.media.audio import (MEL_STEP, SAMPLE_RATE, load_audio, mel_chunks,
                            melspectrogram)
from pipeline.errors import InvalidMedia
from pipeline.media.ffmpeg import ffmpeg_exe

# duration (s) of the decoded audio of each shared file, from the files' own headers
SHARED_AUDIO = {
    "sun.wav": 22.489,
    "speech_en_60s.wav": 60.0,
    "radio_stereo_8s.wav": 8.0,
    "speech_48k_24bit.wav": 5.606,
    "speech_44k.mp3": 4.911,
    "monalisa_720p.mp4": 14.215,
    "hdtf_aoc_512.mp4": 8.0,
}


@functools.cache
def _lipsync_audio() -> types.ModuleType | None:
    spec = importlib.util.find_spec("lipsync")
    if spec is None or not spec.submodule_search_locations:
        return None
    saved = sys.modules.get("lipsync")
    pkg = types.ModuleType("lipsync")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["lipsync"] = pkg
    try:
        return importlib.import_module("lipsync.audio")
    finally:
        if saved is not None:
            sys.modules["lipsync"] = saved
        else:
            del sys.modules["lipsync"]


@pytest.fixture
def wav2lip_audio(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Wav2Lip's audio.py as shipped in the `lipsync` package (installed --no-deps), run
    with librosa 0.7's stft padding (reflect), the version Wav2Lip pinned and trained with.

    ``lipsync/__init__.py`` imports the whole inference stack (it needs PyAV, absent
    here), so the package is stood in for by an empty namespace pointing at its folder;
    ``lipsync.audio`` and ``lipsync.hparams`` then import unchanged. Its functions call
    ``librosa.stft`` and ``librosa.filters.mel`` with keyword arguments, so they run on
    librosa >= 0.10 as they are; only the stft's default ``pad_mode`` changed in 0.10
    ("reflect" -> "constant"), which this fixture sets back for the duration of a test.
    """
    mod = _lipsync_audio()
    if mod is None:
        skip_or_fail("the `lipsync` package (Wav2Lip's code) is not installed")
    stft = librosa.stft

    def stft_librosa07(*args: object, **kw: object) -> np.ndarray:
        kw.setdefault("pad_mode", "reflect")
        return stft(*args, **kw)

    monkeypatch.setattr(librosa, "stft", stft_librosa07)
    return mod


def wav2lip_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """The chunking loop of Wav2Lip's inference.py, verbatim in substance."""
    chunks = []
    mel_idx_multiplier = 80.0 / fps
    i = 0
    while True:
        start_idx = int(i * mel_idx_multiplier)
        if start_idx + MEL_STEP > len(mel[0]):
            chunks.append(mel[:, len(mel[0]) - MEL_STEP:])
            break
        chunks.append(mel[:, start_idx:start_idx + MEL_STEP])
        i += 1
    return chunks


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


# ---- load_audio ---------------------------------------------------------------------------

def test_load_synthetic_wav(speech_wav: Path) -> None:
    wav = load_audio(speech_wav)
    assert wav.dtype == np.float32 and wav.shape == (3 * SAMPLE_RATE,)
    _, pcm = wavfile.read(speech_wav)
    np.testing.assert_allclose(wav, pcm / 32768.0, atol=1e-6)


def test_load_resamples_and_downmixes(d: Path, speech_wav: Path) -> None:
    p = d / "stereo48k24.wav"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(speech_wav),
                    "-ac", "2", "-ar", "48000", "-c:a", "pcm_s24le", str(p)], check=True)
    wav = load_audio(p)
    assert abs(len(wav) - 3 * SAMPLE_RATE) <= 16
    ref = load_audio(speech_wav)
    n = min(len(wav), len(ref))
    assert np.corrcoef(wav[:n], ref[:n])[0, 1] > 0.99


@pytest.mark.parametrize("name", sorted(SHARED_AUDIO))
def test_load_shared(shared_media: Path, name: str) -> None:
    wav = load_audio(shared_media / name)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) / SAMPLE_RATE == pytest.approx(SHARED_AUDIO[name], abs=0.02)
    assert np.isfinite(wav).all() and 0.01 < np.abs(wav).max() <= 1.0


def test_stereo_downmix_is_the_channel_mean(shared_media: Path) -> None:
    _, pcm = wavfile.read(shared_media / "radio_stereo_8s.wav")  # 16 kHz: no resampling
    wav = load_audio(shared_media / "radio_stereo_8s.wav")
    np.testing.assert_allclose(wav, pcm.mean(axis=1) / 32768.0, atol=1e-4)


def test_no_audio_stream(face_mp4: Path) -> None:
    with pytest.raises(InvalidMedia, match=r"face.mp4: has no audio stream \(it contains only video\)"):
        load_audio(face_mp4)


def test_empty_and_zero_length(d: Path) -> None:
    empty = d / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InvalidMedia, match=r"empty.wav: the file is empty"):
        load_audio(empty)
    zero = media.write_wav(d / "zero.wav", np.zeros(0, np.float32))
    with pytest.raises(InvalidMedia, match="zero.wav: has no audio samples"):
        load_audio(zero)


def test_surround_downmix_is_the_channel_mean(d: Path) -> None:
    """Six channels (ffmpeg reads them as 5.1, LFE included) average with equal weights."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    chans = np.stack([0.9 * np.sin(2 * np.pi * (200 + 150 * c) * t) for c in range(6)], axis=1)  # (N, 6)
    p = d / "six.wav"
    wavfile.write(p, SAMPLE_RATE, np.round(chans * 32767).astype(np.int16))
    wav = load_audio(p)
    _, pcm = wavfile.read(p)
    np.testing.assert_allclose(wav, pcm.mean(axis=1) / 32768.0, atol=1e-4)


def test_full_scale_stereo_stays_in_range(d: Path) -> None:
    """Both channels at full scale and in phase: the mean is full scale, not 1.414."""
    pcm = np.full((SAMPLE_RATE // 4, 2), 32767, np.int16)
    pcm[::2] = -32767  # a square wave at 8 kHz, identical in both channels
    p = d / "loud_stereo.wav"
    wavfile.write(p, SAMPLE_RATE, pcm)
    wav = load_audio(p)
    assert np.abs(wav).max() == pytest.approx(32767 / 32768, abs=1e-6)


def test_load_with_given_info_skips_probe(monkeypatch: pytest.MonkeyPatch, speech_wav: Path) -> None:
    from pipeline.media import audio as audio_mod

    info = audio_mod.probe(speech_wav)
    monkeypatch.setattr(audio_mod, "probe", lambda path: pytest.fail("probed again"))
    assert load_audio(speech_wav, info=info).shape == (3 * SAMPLE_RATE,)


def test_all_zero_audio_gives_no_nan(d: Path) -> None:
    p = media.write_wav(d / "digital_silence.wav", np.zeros(SAMPLE_RATE // 2, np.float32))
    wav = load_audio(p)
    assert wav.shape == (SAMPLE_RATE // 2,) and not wav.any()
    mel = melspectrogram(wav)
    assert mel.shape == (80, 41) and (mel == -4.0).all()
    chunks = mel_chunks(mel, 25.0, 13)
    assert np.isfinite(chunks).all() and (chunks == -4.0).all()


# ---- melspectrogram -----------------------------------------------------------------------

def test_mel_shape_and_range() -> None:
    mel = melspectrogram(media.speech_like(2.0))
    assert mel.dtype == np.float32 and mel.shape == (80, 2 * 80 + 1)
    assert mel.min() >= -4.0 and mel.max() <= 4.0
    assert melspectrogram(np.zeros(SAMPLE_RATE, np.float32)).max() == -4.0  # silence floor


def test_mel_matches_wav2lip_synthetic(wav2lip_audio: types.ModuleType) -> None:
    ref = wav2lip_audio
    wav = media.speech_like(3.0, seed=3)
    np.testing.assert_allclose(melspectrogram(wav), ref.melspectrogram(wav), rtol=0, atol=1e-5)


def test_mel_matches_wav2lip_real(shared_media: Path, wav2lip_audio: types.ModuleType) -> None:
    ref = wav2lip_audio
    wav = load_audio(shared_media / "speech_44k.mp3")
    ours, theirs = melspectrogram(wav), ref.melspectrogram(wav)
    assert ours.shape == theirs.shape == (80, len(wav) // 200 + 1)
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large:UserWarning")
@pytest.mark.parametrize("n", [0, 1, 150, 799])
def test_mel_of_empty_or_tiny_audio_is_finite(n: int) -> None:
    for wav in (np.zeros(n, np.float32), np.full(n, 0.5, np.float32)):
        mel = melspectrogram(wav)
        assert mel.shape == (80, n // 200 + 1) and np.isfinite(mel).all()
    assert (melspectrogram(np.zeros(n, np.float32)) == -4.0).all()
    chunks = mel_chunks(melspectrogram(np.zeros(n, np.float32)), 25.0, 4)
    assert chunks.shape == (4, 80, 16) and (chunks == -4.0).all()


def test_stft_padding_is_wav2lips_reflect() -> None:
    """Wav2Lip ran librosa 0.7 (stft pad_mode "reflect"); librosa >= 0.10 pads with zeros.
    The two differ in the first and last 2 columns only; ours must be the reflect one."""
    ref = _lipsync_audio()
    if ref is None:
        skip_or_fail("the `lipsync` package (Wav2Lip's code) is not installed")
    wav = media.speech_like(1.0, pattern=((1.0, True),))  # voiced at both edges
    ours, zero_padded = melspectrogram(wav), ref.melspectrogram(wav)  # unpatched: librosa 0.11
    np.testing.assert_allclose(ours[:, 2:-2], zero_padded[:, 2:-2], rtol=0, atol=1e-5)
    assert np.abs(ours[:, 0] - zero_padded[:, 0]).max() > 0.05
    assert np.abs(ours[:, -1] - zero_padded[:, -1]).max() > 0.05


# ---- mel_chunks ---------------------------------------------------------------------------

@pytest.mark.parametrize("fps", [25.0, 30000 / 1001, 24.0, 60.0, 12.5])
def test_mel_chunks_match_wav2lip_loop(fps: float) -> None:
    mel = np.random.default_rng(0).standard_normal((80, 321)).astype(np.float32)  # 4 s
    ref = np.stack(wav2lip_chunks(mel, fps))  # Wav2Lip's frame count for this audio
    ours = mel_chunks(mel, fps, len(ref))
    assert ours.shape == (len(ref), 80, 16) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


def test_mel_chunks_end_padding() -> None:
    mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
    chunks = mel_chunks(mel, 25.0, 60)  # 2.4 s of frames over 1.25 s of mel
    assert chunks.shape == (60, 80, 16)
    np.testing.assert_array_equal(chunks[1], mel[:, 3:19])  # int(1 * 3.2)
    for i in range(27, 60):  # int(27 * 3.2) = 86 > 100 - 16: the last window
        np.testing.assert_array_equal(chunks[i], mel[:, -16:])


def test_mel_chunks_short_mel_padded_with_silence() -> None:
    chunks = mel_chunks(np.zeros((80, 5), np.float32), 25.0, 3)
    assert chunks.shape == (3, 80, 16)
    assert (chunks[:, :, :5] == 0).all() and (chunks[:, :, 5:] == -4.0).all()


def test_mel_basis_window_and_preemphasis_are_librosa_and_scipy_exactly() -> None:
    """The numpy mel filter bank, Hann window and pre-emphasis (kept free of librosa and
    scipy.signal for start-up) give the very floats librosa and scipy give."""
    from scipy import signal

    from pipeline.media import audio as audio_mod

    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    assert audio_mod._mel_basis().dtype == ref.dtype and np.array_equal(audio_mod._mel_basis(), ref)
    assert np.array_equal(audio_mod._window(), signal.get_window("hann", 800, fftbins=True))
    wav = np.random.default_rng(3).standard_normal(4000)
    emphasized = signal.lfilter([1, -0.97], [1], wav)
    spec = librosa.stft(emphasized, n_fft=800, hop_length=200, win_length=800, pad_mode="reflect")
    db = 20 * np.log10(np.maximum(1e-5, ref @ np.abs(spec))) - 20
    expected = np.clip(8 * ((db + 100) / 100) - 4, -4, 4).astype(np.float32)
    assert np.array_equal(audio_mod.melspectrogram(wav), expected)
