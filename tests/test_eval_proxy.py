"""The weights-free sync proxy on real media: shifted audio moves its offset by the shift,
unrelated speech lowers its peak correlation. Plus its pieces on synthetic series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from eval import lse
from eval import sync_proxy as sp
from eval.score import score_videos
from pipeline.media.audio import SAMPLE_RATE, load_audio
from pipeline.faces.backends import make_tracker
from pipeline.faces.tracking import track_frames
from pipeline.media.decode import read_frames

FPS = 25.0
SAMPLES_PER_FRAME = int(SAMPLE_RATE / FPS)  # 640


def _lead(wav: np.ndarray, frames: int) -> np.ndarray:
    """The audio made to lead the video by ``frames`` (negative: to lag), same length."""
    s = frames * SAMPLES_PER_FRAME
    pad = np.zeros(abs(s), np.float32)
    return np.concatenate([wav[s:], pad]) if s > 0 else np.concatenate([pad, wav[:len(wav) + s]])


@pytest.fixture(scope="module")
def hdtf(shared_media: Path) -> tuple[np.ndarray, np.ndarray]:
    """(mouth openings per frame, audio) of hdtf_aoc_512.mp4: tracked at half size, landmarks
    of every frame by dlib at the tracked box (score_videos does the same on a scaled region)."""
    video = shared_media / "hdtf_aoc_512.mp4"
    tracker = make_tracker("dlib")
    track = track_frames(read_frames(video, size=(256, 256)), scale=2.0, tracker=tracker)
    faces = [None if f is None else tracker.landmarks(frame, f)
             for f, frame in zip(track.faces, read_frames(video))]
    return sp.mouth_openings(faces), load_audio(video)


def test_shifted_audio_moves_the_offset(hdtf: tuple[np.ndarray, np.ndarray]) -> None:
    openings, wav = hdtf
    corr0, base, _ = sp.sync_proxy(openings, wav, FPS)
    assert corr0 > 0.2
    assert abs(base) <= 5  # a real clip is near sync
    for shift in (3, 5, -4):
        _, offset, _ = sp.sync_proxy(openings, _lead(wav, shift), FPS)
        assert abs((offset - base) - shift) <= 1, (shift, base, offset)


def test_unrelated_speech_correlates_less(hdtf: tuple[np.ndarray, np.ndarray], shared_media: Path) -> None:
    openings, wav = hdtf
    aligned, _, _ = sp.sync_proxy(openings, wav, FPS)
    other = load_audio(shared_media / "speech_en_60s.wav")[:8 * SAMPLE_RATE]
    unrelated, _, _ = sp.sync_proxy(openings, other, FPS)
    assert unrelated < aligned - 0.15, (aligned, unrelated)


def test_score_videos_proxy_follows_shifted_audio(shared_media: Path, tmp_path: Path) -> None:
    """End to end through score_videos (landmarks on ``landmark_frame`` frames, the rest
    interpolated): audio made to lead by 5 frames moves the proxy's offset by 5 +- 1."""
    video = shared_media / "hdtf_aoc_512.mp4"
    track = track_frames(read_frames(video, size=(256, 256)), scale=2.0, tracker=make_tracker("dlib"))
    wav = load_audio(video)
    offsets = []
    for shift in (0, 5):
        path = tmp_path / f"lead{shift}.wav"
        wavfile.write(path, SAMPLE_RATE, lse.to_int16(_lead(wav, shift)))
        scores = score_videos(video, video, audio=path, track=track)
        offsets.append(scores.value("sync_proxy_offset"))
        assert scores.value("sync_proxy_corr") > 0.2
    assert abs(offsets[1] - offsets[0] - 5) <= 1, offsets
    assert abs(offsets[0]) <= 5


def test_cross_correlation_finds_a_planted_lead() -> None:
    """A series whose audio is the video 4 frames early: offset +4 (audio leads), corr ~1."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    video, audio = x[:-4], x[4:]  # audio[i] = video[i + 4]: sounds come 4 frames before the mouth
    corr = sp.cross_correlate(video, audio)
    lag = int(np.argmax(corr)) - sp.MAX_LAG
    assert -lag == 4 and corr.max() == pytest.approx(1.0)


def test_envelope_and_openings_shapes() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    wav = (np.sin(2 * np.pi * 1000 * t) * (t < 0.5)).astype(np.float32)  # 0.5 s tone, then silence
    env = sp.speech_envelope(wav, FPS, 30)
    assert env.shape == (30,)
    assert env[:10].min() > 0.5 and env[15:25].max() < 0.01 and env[-5:].max() == 0.0  # past the end
    assert np.isnan(sp.mouth_openings([None, None])).all()
    with pytest.raises(ValueError, match="too short"):
        sp.sync_proxy(np.zeros(10), wav, FPS)
