"""pipeline.generators: the registry, passthrough, and the baseline's audio-to-mouth logic
and rendering (on the real synthetic face with the real dlib tracker; no stubs)."""

from __future__ import annotations

import numpy as np
import pytest

import media
from pipeline.media import audio as audio_mod
from pipeline.generators.blend import Patch, paste
from pipeline.errors import WeightsUnavailable
from pipeline.faces.types import Face
from pipeline.faces.backends import make_tracker
from pipeline.generators.base import Generator, GeneratorJob
from pipeline.generators.baseline import BaselineGenerator, MouthDriver, mel_level_db
from pipeline.generators.registry import available_generators, get_generator, register_generator
from pipeline.generators.mouth import render_mouth

FPS = 25.0


def _mels(seconds: float, pattern: tuple[tuple[float, bool], ...]) -> np.ndarray:
    wav = media.speech_like(seconds, pattern=pattern)
    n = int(seconds * FPS)
    return audio_mod.mel_chunks(audio_mod.melspectrogram(wav), FPS, n)  # (n, 80, 16)


@pytest.fixture(scope="module")
def face_and_frame() -> tuple[Face, np.ndarray]:
    frame = media.face_frame(0)
    faces = make_tracker("dlib").detect(frame)
    assert len(faces) == 1
    return faces[0], frame


def test_registry_names_and_unknown_name() -> None:
    assert {"baseline", "passthrough", "wav2lip"} <= set(available_generators())
    with pytest.raises(ValueError, match="unknown generator 'nope'.*baseline"):
        get_generator("nope")


def test_register_generator_passes_keywords() -> None:
    class Fixed(Generator):
        name = "fixed"
        needs_faces = False

        def __init__(self, *, value: int) -> None:
            self.value = value

        def new_job(self, *, fps: float, width: int, height: int) -> GeneratorJob:
            raise NotImplementedError

    register_generator("fixed-test", Fixed)
    gen = get_generator("fixed-test", value=3)
    assert isinstance(gen, Fixed) and gen.value == 3


def test_wav2lip_without_weights_is_weights_unavailable(tmp_path) -> None:
    """No checkpoint can exist here (no Hub access): the lazy wav2lip entry must say so with
    WeightsUnavailable, the error `--model auto` falls back on."""
    with pytest.raises(WeightsUnavailable):
        get_generator("wav2lip", checkpoint=str(tmp_path / "missing.pth"), device="cpu", pads=(0, 10, 0, 0))


def test_passthrough_returns_none_for_every_frame() -> None:
    gen = get_generator("passthrough")
    assert gen.name == "passthrough" and gen.needs_faces is False
    job = gen.new_job(fps=FPS, width=64, height=48)
    frames = np.zeros((3, 48, 64, 3), np.uint8)
    assert job.process(frames, np.full((3, 80, 16), -4.0, np.float32), [None] * 3) == [None, None, None]
    with pytest.raises(ValueError, match="differ in length"):
        job.process(frames, np.zeros((2, 80, 16), np.float32), [None] * 3)


def test_mel_level_tracks_loudness() -> None:
    silent = np.full((2, 80, 16), -4.0, np.float32)
    assert np.allclose(mel_level_db(silent, FPS), -100.0)
    loud = np.full((1, 80, 16), 0.0, np.float32)  # -50 dB in every bin
    assert mel_level_db(loud, FPS)[0] == pytest.approx(-50.0, abs=0.01)
    # only the columns under the frame count: 80 / 25 -> the first 3 of 16
    late = silent[:1].copy()
    late[:, :, 3:] = 0.0
    assert mel_level_db(late, FPS)[0] == pytest.approx(-100.0, abs=0.01)


def test_driver_gates_silence_and_opens_for_speech() -> None:
    mels = _mels(3.0, ((0.5, False), (1.0, True), (1.5, False)))
    opening = MouthDriver(FPS).run(mel_level_db(mels, FPS))  # (75,)
    assert np.all(opening[:12] == 0.0)  # silence before the speech: shut
    assert opening[12:38].max() > 0.7  # speech opens it wide
    assert np.mean(opening[12:38] > 0.05) > 0.5  # and most speech frames show an open mouth
    assert np.all(opening[45:] == 0.0)  # 0.3 s after the speech ends it is shut again
    assert np.all((0.0 <= opening) & (opening <= 1.0))


def test_driver_attack_is_faster_than_release() -> None:
    levels = np.array([-100.0] * 5 + [-45.0] * 10 + [-100.0] * 10, np.float32)
    opening = MouthDriver(FPS).run(levels)
    assert opening[5] > 0.6 and opening[6] > 0.9  # opens within two frames
    assert 0.1 < opening[15] < 0.9 and opening[16] < opening[15]  # closes over a few frames
    assert opening[20] == 0.0


def test_driver_ignores_steady_background_noise() -> None:
    """Speech bursts (-45 dB) over a constant hum (-62 dB): after the 2 s floor window has
    heard the hum, the mouth stays shut between bursts and still opens for speech."""
    burst, pause = [-45.0] * 8, [-62.0] * 12
    levels = np.array((burst + pause) * 8, np.float32)  # 160 frames, 6.4 s
    opening = MouthDriver(FPS).run(levels)
    late = np.arange(len(levels)) >= 60
    in_pause = np.array([(i % 20) >= 12 for i in range(len(levels))])
    assert np.all(opening[late & in_pause & (np.arange(len(levels)) % 20 >= 16)] == 0.0)
    assert opening[late & ~in_pause].max() > 0.7


def test_baseline_state_carries_across_batches(face_and_frame) -> None:
    face, frame = face_and_frame
    mels = _mels(1.6, ((0.3, False), (0.8, True), (0.5, False)))
    n = len(mels)
    frames = np.stack([frame] * n)  # (n, H, W, 3)
    gen = BaselineGenerator(landmarker=None)
    whole = gen.new_job(fps=FPS, width=384, height=384)
    whole.process(frames, mels, [face] * n)
    pieces = gen.new_job(fps=FPS, width=384, height=384)
    for start in range(0, n, 7):
        pieces.process(frames[start:start + 7], mels[start:start + 7], [face] * len(mels[start:start + 7]))
    assert np.allclose(whole.openings, pieces.openings)
    assert max(whole.openings) > 0.5


def test_baseline_patches_only_where_faces_are(face_and_frame) -> None:
    face, frame = face_and_frame
    gen = get_generator("baseline")
    assert gen.name == "baseline" and gen.needs_faces is True
    job = gen.new_job(fps=FPS, width=384, height=384)
    mels = _mels(0.2, ((1.0, True),))  # (5, 80, 16)
    patches = job.process(np.stack([frame] * 5), mels, [face, None, face, face, None])
    assert [p is None for p in patches] == [False, True, False, False, True]
    nose_y = float(face.landmarks[30, 1])
    for p in patches:
        if p is not None:
            assert isinstance(p, Patch)
            assert p.box[1] > nose_y - 0.1 * face.height  # the patch starts below the nose
            assert p.box[3] - p.box[1] < 0.7 * face.height  # a small mouth patch, not the face


def _dark_rows(frame: np.ndarray, face: Face) -> int:
    """Rows of very dark pixels in the mouth's centre column band (the open mouth's inside)."""
    lm = face.landmarks
    cx = int(round((lm[48, 0] + lm[54, 0]) / 2))
    y1, y2 = int(lm[51, 1]), int(lm[8, 1])
    band = frame[y1:y2, cx - 3:cx + 4].astype(np.float32).mean(axis=(1, 2))  # (rows,)
    return int(np.sum(band < 60))


def test_render_mouth_opens_in_proportion(face_and_frame) -> None:
    face, frame = face_and_frame
    rows = []
    for amount in (0.0, 0.5, 1.0):
        patch = render_mouth(frame, face.mouth, amount)
        assert patch is not None
        out = paste(frame.copy(), patch)
        rows.append(_dark_rows(out, face))
        x1, y1, x2, y2 = patch.box
        untouched = np.ones(frame.shape[:2], bool)
        untouched[y1:y2, x1:x2] = False
        assert np.array_equal(out[untouched], frame[untouched])  # nothing outside the patch moves
    width = float(np.linalg.norm(face.landmarks[54] - face.landmarks[48]))
    assert rows[0] <= 1
    assert rows[0] < rows[1] < rows[2]
    assert rows[2] > 0.25 * width


def test_render_mouth_closes_an_open_mouth(face_and_frame) -> None:
    """Opening 0 pulls the lower lip up to the upper one: an open source mouth is shut."""
    face, frame = face_and_frame
    opened = paste(frame.copy(), render_mouth(frame, face.mouth, 1.0))
    refit = make_tracker("dlib").landmarks(opened, face)
    assert _dark_rows(opened, refit) > 5
    closed = paste(opened.copy(), render_mouth(opened, refit.mouth, 0.0))
    assert _dark_rows(closed, refit) <= 1


def test_only_a_baseline_without_landmarker_needs_the_tracks_landmarks() -> None:
    """The run loop tracks boxes only when the generator fits its own landmarks (or needs none)."""
    from pipeline.generators.baseline import BaselineGenerator
    from pipeline.generators.passthrough import PassthroughGenerator

    assert BaselineGenerator(landmarker="dlib").needs_track_landmarks is False
    assert BaselineGenerator(landmarker=None).needs_track_landmarks is True
    assert PassthroughGenerator().needs_faces is False
