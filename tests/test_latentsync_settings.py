"""LatentSync's job options (steps, guidance, seed, silence_keep) from RunOptions, the CLI and
the API; the silence gate; the alignment smoothed over frames; the model choice in the app.

The generator tests use ``weights_dir`` (fixtures_latentsync): small random models in the
published layouts, standing in for the Hub weights that cannot be downloaded here; their
outputs are noise, never a measure of quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import media
import numpy as np
import pytest
from fixtures_latentsync import reference, weights_dir  # noqa: F401 (fixtures)

from pipeline.__main__ import add_run_arguments, options_from_args
from pipeline.faces.types import Face
from pipeline.generators.latentsync.align import align_points
from pipeline.generators.latentsync.silence import keep_weights, output_frames, silent_frames
from pipeline.generators.latentsync.smoothing import PointSmoother
from pipeline.generators.registry import get_generator, select_generator
from pipeline.options import RunOptions
from pipeline.weights import LATENTSYNC_DIR_ENV

FPS = 25.0


@pytest.mark.parametrize("bad, named", [
    ({"steps": 0}, "steps"), ({"steps": 1001}, "steps"), ({"steps": 2.5}, "steps"),
    ({"guidance": -0.1}, "guidance"), ({"guidance": 20.5}, "guidance"),
    ({"seed": -1}, "seed"), ({"seed": 2**32}, "seed"), ({"silence_keep": "no"}, "silence_keep"),
])
def test_run_options_check_the_ranges(bad: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RunOptions(model="latentsync", **bad)


def test_cli_flags_and_api_options_reach_run_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(["v.mp4", "a.wav", "-o", "o.mp4", "--model", "latentsync", "--steps", "7",
                              "--guidance", "2.5", "--seed", "11", "--no-silence-keep"])
    opts = options_from_args(args)
    assert (opts.steps, opts.guidance, opts.seed, opts.silence_keep) == (7, 2.5, 11, False)
    defaults = options_from_args(parser.parse_args(["v.mp4", "a.wav", "-o", "o.mp4"]))
    assert (defaults.steps, defaults.guidance, defaults.seed, defaults.silence_keep) == (None, None, None, True)
    recorded = opts.to_dict()  # what the history keeps as the job's options
    assert recorded["steps"] == 7 and recorded["seed"] == 11 and recorded["silence_keep"] is False

    from jobs.service import parse_options
    from jobs.settings import settings_from_env

    settings = settings_from_env({"LIPSYNC_DATA_DIR": str(tmp_path)})
    api = parse_options("latentsync", '{"steps": 3, "guidance": 1.0, "seed": 5, "silence_keep": false}',
                        settings=settings)
    assert (api.steps, api.guidance, api.seed, api.silence_keep) == (3, 1.0, 5, False)
    with pytest.raises(ValueError, match="steps must be a whole number from 1 to 1000"):
        parse_options("latentsync", '{"steps": 0}', settings=settings)


def test_generator_takes_the_job_options_and_reports_them(weights_dir: Path) -> None:
    gen, reason = select_generator(RunOptions(model="latentsync", device="cpu", steps=3, guidance=1.0, seed=9,
                                              silence_keep=False))
    assert reason == "latentsync requested"
    assert gen.settings() == {"steps": 3, "guidance": 1.0, "seed": 9, "silence_keep": False,
                              "device": "cpu", "dtype": "float32"}
    env_default = get_generator("latentsync", device="cpu")  # the fixture's $LIPSYNC_LATENTSYNC_STEPS=1
    assert env_default.options.steps == 1 and env_default.options.guidance == 1.5 and env_default.silence_keep


def test_keep_weights_ramp_inside_long_silences_only() -> None:
    silent = np.array([0] * 5 + [1] * 3 + [0] * 4 + [1] * 12 + [0] * 3, bool)  # a 3-frame pause, a 12-frame silence
    w = keep_weights(silent, FPS)  # silences shorter than 0.2 s (5 frames) do not count
    assert (w[:12] == 0).all() and (w[24:] == 0).all()
    np.testing.assert_allclose(w[12:24], [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    leading = keep_weights(np.array([1] * 8 + [0] * 4, bool), FPS)  # silence at the clip's start: kept from frame 0
    np.testing.assert_allclose(leading, [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0, 0, 0])


def _speech_silence_speech() -> np.ndarray:
    voiced = ((1.0, True),)
    return np.concatenate([media.speech_like(1.0, pattern=voiced), np.zeros(16000, np.float32),
                           media.speech_like(0.6, pattern=voiced, seed=1)])  # 1 s speech, 1 s silence, 0.6 s speech


def test_the_baseline_gate_hears_the_silent_stretch() -> None:
    wav = _speech_silence_speech()
    n = output_frames(len(wav), FPS)
    silent = silent_frames(wav, FPS, n)
    weights = keep_weights(silent, FPS)
    assert n == 65
    assert (weights[30:45] == 1.0).all()  # well inside the silence (frames 25-49): the source
    assert (weights[:20] == 0).all() and (weights[52:] == 0).all()  # in speech: the model's mouth


def _face_at(frame_size: tuple[int, int]) -> Face:
    h, w = frame_size
    landmarks = np.zeros((68, 2), np.float32)
    landmarks[17:22], landmarks[22:27], landmarks[27:36] = (w * 0.38, h * 0.4), (w * 0.62, h * 0.4), (w * 0.5, h * 0.55)
    return Face(box=(w * 0.25, h * 0.25, w * 0.75, h * 0.85), landmarks=landmarks, score=1.0)


def test_frames_in_silence_keep_the_source(weights_dir: Path) -> None:
    """Speech, a silent second, speech: the frames the gate hears as silence get no patch (the
    source, identical), the edges fade, and the speech frames are generated."""
    wav = media.write_wav(weights_dir / "gap.wav", _speech_silence_speech())
    gen = get_generator("latentsync", device="cpu")
    frames = np.stack([media.face_frame(i) for i in range(65)])  # (65, H, W, 3)
    face = _face_at(frames.shape[1:3])
    job = gen.new_job(fps=FPS, width=frames.shape[2], height=frames.shape[1], audio=wav)
    mels = np.zeros((16, 80, 16), np.float32)
    patches = []
    for start in range(0, 65, 16):
        chunk = frames[start:start + 16]
        patches += job.process(chunk, mels[:len(chunk)], [face] * len(chunk))
    weights = job.keep
    silent = [i for i in range(65) if weights[i] >= 1.0]
    assert len(silent) >= 15 and all(patches[i] is None for i in silent)
    speech = [i for i in range(65) if weights[i] == 0.0]
    assert all(patches[i] is not None for i in speech)
    fading = [i for i in range(65) if 0 < weights[i] < 1]
    full = max(p.alpha.max() for p in (patches[i] for i in speech))
    assert fading and all(patches[i].alpha.max() <= (1 - weights[i]) * full + 1e-6 for i in fading)
    assert job.facts()["frames_kept_silent"] == len(silent) and job.facts()["silence_keep"] is True

    off = get_generator("latentsync", device="cpu", silence_keep=False)
    job_off = off.new_job(fps=FPS, width=frames.shape[2], height=frames.shape[1], audio=wav)
    middle = job_off.process(frames[:16], mels, [face] * 16)  # any 16 frames: all generated
    assert all(p is not None for p in middle) and job_off.facts()["frames_kept_silent"] == 0


def test_the_same_seed_repeats_and_another_differs(weights_dir: Path) -> None:
    wav = media.write_wav(weights_dir / "speech.wav", media.speech_like(0.3))
    frames = np.stack([media.face_frame(i) for i in range(2)])
    face = _face_at(frames.shape[1:3])

    def images(seed: int) -> list[np.ndarray]:
        gen = get_generator("latentsync", device="cpu", seed=seed)
        job = gen.new_job(fps=FPS, width=frames.shape[2], height=frames.shape[1], audio=wav)
        return [p.image for p in job.process(frames, np.zeros((2, 80, 16), np.float32), [face, face])]

    first, again, other = images(4), images(4), images(5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


def test_alignment_points_are_smoothed_over_frames() -> None:
    rng = np.random.default_rng(0)
    still = np.array([[150.0, 160.0], [250.0, 160.0], [200.0, 215.0]])  # brows 100 px apart
    smoother = PointSmoother(FPS)
    raw = [still + rng.normal(0, 2.0, still.shape) for _ in range(100)]  # 2 px of landmark jitter
    out = np.array([smoother(p) for p in raw])
    assert out[20:].std(axis=0).max() < 0.5 * np.array(raw)[20:].std(axis=0).min()
    np.testing.assert_allclose(PointSmoother(FPS)(still), still)  # the first frame passes unchanged

    moving = PointSmoother(FPS)  # a head moving 0.5 face sizes per second: followed within 4 px
    track = [still + [50.0 * i / FPS, 0.0] for i in range(50)]
    followed = np.array([moving(p) for p in track])
    assert np.abs(followed[-10:] - np.array(track[-10:])).max() < 4.0

    cut = still + [80.0, 0.0]  # a jump of 0.8 face sizes in one frame (a cut): starts afresh
    np.testing.assert_allclose(smoother(cut), cut)


def test_brows_and_nose_from_68_and_106_landmarks() -> None:
    lm68 = np.zeros((68, 2), np.float32)
    lm68[17:22], lm68[22:27], lm68[27:36] = (10, 20), (30, 20), (20, 40)
    np.testing.assert_allclose(align_points(Face((0, 0, 50, 60), lm68, 1.0)), [[10, 20], [30, 20], [20, 40]])
    lm106 = np.zeros((106, 2), np.float32)
    lm106[[43, 48, 49, 51, 50]], lm106[101:106], lm106[[74, 77, 83, 86]] = (11, 21), (31, 21), (21, 41)
    np.testing.assert_allclose(align_points(Face((0, 0, 50, 60), lm106, 1.0)), [[11, 21], [31, 21], [21, 41]])


def test_the_app_says_whether_latentsync_weights_were_found(weights_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from ui.generate import model_choices

    labels = dict((value, label) for label, value in model_choices())
    assert "latentsync" in labels and "weights found" in labels["latentsync"]
    monkeypatch.setenv(LATENTSYNC_DIR_ENV, str(tmp_path / "none"))
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    labels = dict((value, label) for label, value in model_choices())
    assert "weights missing: LatentSync 1.5 UNet, LatentSync whisper tiny" in labels["latentsync"]
