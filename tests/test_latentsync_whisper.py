"""LatentSync's audio tokens against the official ``Audio2Feature``: whisper-tiny encoder
features and per-frame 50 x 384 chunks, from ``whisper_tiny_random.pt`` (random weights in the
published layout, with a shrunk text decoder the encoder loader must ignore)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures_latentsync import TOLERANCE, max_abs, reference  # noqa: F401 (fixtures)

from pipeline.errors import WeightsInvalid
from pipeline.generators.latentsync.audio_tokens import (
    encoder_features,
    frame_tokens,
    load_speech,
    official_frame_count,
)
from pipeline.generators.latentsync.whisper import load_whisper_encoder


@pytest.fixture(scope="module")
def encoder(reference: Path) -> torch.nn.Module:
    return load_whisper_encoder(reference / "whisper_tiny_random.pt")


@pytest.fixture(scope="module")
def cases(reference: Path) -> dict:
    return torch.load(reference / "whisper_features_cases.pt", weights_only=True)


def test_speech_44k_mp3_features_and_chunks(encoder: torch.nn.Module, cases: dict, shared_media: Path) -> None:
    case = cases["speech_44k.mp3"]
    features = encoder_features(encoder, load_speech(shared_media / "speech_44k.mp3"))
    assert features.shape == (245, 5, 384)
    assert max_abs(features, case["features"]) < TOLERANCE
    chunks = frame_tokens(features, fps=25)
    assert chunks.shape == (124, 50, 384)
    assert max_abs(chunks, case["chunks_fps25"]) < TOLERANCE


def test_two_window_track(encoder: torch.nn.Module, cases: dict, shared_media: Path) -> None:
    case = cases["speech_en_60s.wav"]
    features = encoder_features(encoder, load_speech(shared_media / "speech_en_60s.wav"))
    assert list(features.shape) == list(case["features_shape"])
    assert max_abs(features[1400:1600], case["rows_1400_1600"]) < TOLERANCE  # across the 30 s boundary
    assert max_abs(features[-100:], case["last_100_rows"]) < TOLERANCE
    chunks = frame_tokens(features, fps=25)
    assert chunks.shape[0] == case["chunks_fps25_count"] == 1502
    assert max_abs(chunks[:4], case["chunks_fps25_first_4"]) < TOLERANCE
    assert max_abs(chunks[749:753], case["chunks_fps25_749_753"]) < TOLERANCE
    assert max_abs(chunks[-4:], case["chunks_fps25_last_4"]) < TOLERANCE


def _rows(n: int) -> torch.Tensor:
    """(n, 5, 384) features whose every value is its row index."""
    return torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 5, 384).clone()


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001, 50.0, 12.5])
def test_tokens_centre_on_i_times_50_over_fps(fps: float) -> None:
    tokens = frame_tokens(_rows(300), fps=fps)  # (N, 50, 384)
    for i in (0, 1, 7, 40, tokens.shape[0] - 1):
        centre = int(i * 50 / fps)
        expected = [min(max(r, 0), 299) for r in range(centre - 4, centre + 6)]
        assert tokens[i, ::5, 0].tolist() == expected  # one value per feature row


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001, 24.0])
def test_frame_count_follows_the_official_loop(fps: float) -> None:
    for n_rows in (1, 245, 3000, 3001):
        i = 0
        while True:  # feature2chunks' loop
            start = int(i * (50.0 / fps))
            i += 1
            if start > n_rows:
                break
        assert official_frame_count(n_rows, fps) == i


def test_requested_frame_count() -> None:
    tokens = frame_tokens(_rows(10), fps=25, num_frames=9)
    assert tokens.shape == (9, 50, 384)
    assert tokens[8, ::5, 0].tolist() == [9.0] * 10  # past the track: its last row


def test_encoder_only_loader_names_a_missing_encoder_key(reference: Path, tmp_path: Path) -> None:
    ckpt = torch.load(reference / "whisper_tiny_random.pt", weights_only=True)
    del ckpt["model_state_dict"]["encoder.blocks.3.mlp.2.bias"]
    path = tmp_path / "tiny.pt"
    torch.save(ckpt, path)
    with pytest.raises(WeightsInvalid, match=r"tiny\.pt: missing key 'encoder\.blocks\.3\.mlp\.2\.bias'"):
        load_whisper_encoder(path)


def test_whisper_filterbank_is_librosa_exactly_and_speech_tokens_import_no_librosa(shared_media: Path) -> None:
    """whisper's 80-band mel filterbank is librosa's to the bit; a whole track's log-mel is
    made without importing librosa (about a second per process)."""
    import subprocess
    import sys

    import librosa
    import numpy as np

    from pipeline.generators.latentsync import audio_tokens

    ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)
    ours = audio_tokens._mel_filters().numpy()
    assert ours.dtype == ref.dtype and np.array_equal(ours, ref)
    code = ("import sys\nfrom pipeline.generators.latentsync.audio_tokens import load_speech, log_mel\n"
            "mel = log_mel(load_speech(sys.argv[1]))\n"
            "print(tuple(mel.shape), sorted(m for m in sys.modules if m.split('.')[0] in ('librosa', 'numba')))\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, str(shared_media / "speech_44k.mp3")], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("[]"), out.stdout
