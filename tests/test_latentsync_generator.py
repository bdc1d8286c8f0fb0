"""The "latentsync" generator in the run loop: weights from $LIPSYNC_LATENTSYNC_DIR, face
alignment and paste-back, per-job audio tokens, and a whole job through ``pipeline.run``.

The folder holds the small random UNet, the random whisper and a tiny random VAE, in the
published layouts: the outputs are noise, never a measure of quality.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import media
import numpy as np
import pytest
from fixtures_latentsync import reference, weights_dir  # noqa: F401 (fixtures)

from pipeline.errors import WeightsUnavailable
from pipeline.faces.types import Face
from pipeline.generators.latentsync.align import TEMPLATE, face_matrix, face_patch, warp_face
from pipeline.generators.registry import available_generators, get_generator, select_generator
from pipeline.options import RunOptions
from pipeline.weights import LATENTSYNC_DIR_ENV
from pipeline.weights_report import weights_report


def test_registered_and_never_auto() -> None:
    assert "latentsync" in available_generators()
    assert RunOptions(model="latentsync").model == "latentsync"


def test_missing_weights_name_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LATENTSYNC_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match=r"LatentSync 1\.5 UNet weights not found.*empty/latentsync_unet\.pt"):
        select_generator(RunOptions(model="latentsync", device="cpu"))  # no fallback when asked by name


def test_weights_report_lists_the_folder(weights_dir: Path) -> None:
    rows = {r["name"]: r for r in weights_report()}
    for name, place in (("latentsync_unet", "latentsync_unet.pt"), ("latentsync_whisper", "whisper/tiny.pt"),
                        ("latentsync_vae", "vae/diffusion_pytorch_model.safetensors")):
        assert rows[name]["found"] and rows[name]["source"] == "latentsync_dir"
        assert rows[name]["where"] == str((weights_dir / place).absolute())
    assert rows["latentsync_vae"]["config"] == str((weights_dir / "vae" / "config.json").absolute())  # its own


def _face(points: np.ndarray) -> Face:
    """A face whose brows centre on points[0], points[1] and whose nose centres on points[2]."""
    landmarks = np.zeros((68, 2), np.float32)
    landmarks[17:22], landmarks[22:27], landmarks[27:36] = points[0], points[1], points[2]
    xs, ys = points[:, 0], points[:, 1]
    return Face(box=(xs.min() - 40, ys.min() - 40, xs.max() + 40, ys.max() + 90), landmarks=landmarks, score=1.0)


def test_alignment_maps_the_points_onto_the_template_and_back() -> None:
    points = np.array([[150.0, 160.0], [250.0, 150.0], [202.0, 215.0]])  # a slightly rotated face
    matrix = face_matrix(points)
    mapped = np.c_[points, np.ones(3)] @ matrix.T
    template_256 = TEMPLATE * np.array([256 / 210, 256 / 280])
    assert np.abs(mapped - template_256).max() < 8  # a similarity fit of 3 points: close, not exact
    frame = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (400, 420, 3), np.uint8), (0, 0), 6)
    aligned = warp_face(frame, matrix)
    assert aligned.shape == (256, 256, 3)
    patch = face_patch(aligned, matrix, 420, 400)  # RGB in, BGR patch out: the frame again
    x1, y1, x2, y2 = patch.box
    inside = patch.alpha > 0.99
    assert inside.sum() > 1000 and (patch.alpha[~inside] < 0.99).all()
    error = np.abs(patch.image.astype(int) - frame[y1:y2, x1:x2].astype(int))[inside]
    assert error.mean() < 3  # the round trip of a smooth image through the 256 face
    mouth_row = int(y1 + (np.argwhere(inside)[:, 0].mean()))
    assert mouth_row > points[:, 1].max()  # the redrawn region lies below the brows and the nose


def test_job_patches_faces_only_and_repeats_with_a_seed(weights_dir: Path) -> None:
    wav = media.write_wav(weights_dir / "speech.wav", media.speech_like(1.0))
    gen = get_generator("latentsync", device="cpu", seed=3)
    assert gen.needs_audio and not gen.needs_mels and gen.default_batch_size == 16
    frames = np.stack([media.face_frame(i) for i in range(3)])  # (3, H, W, 3) BGR
    h, w = frames.shape[1:3]
    face = _face(np.array([[w * 0.38, h * 0.4], [w * 0.62, h * 0.4], [w * 0.5, h * 0.55]]))
    mels = np.zeros((3, 80, 16), np.float32)
    first = gen.new_job(fps=25.0, width=w, height=h, audio=wav).process(frames, mels, [face, None, face])
    again = gen.new_job(fps=25.0, width=w, height=h, audio=wav).process(frames, mels, [face, None, face])
    assert first[1] is None and first[0] is not None and first[2] is not None
    assert first[0].image.shape[:2] == first[0].alpha.shape
    assert np.array_equal(first[0].image, again[0].image) and np.array_equal(first[2].image, again[2].image)
    assert not np.array_equal(first[0].image, first[2].image)  # frames 0 and 2 hear different audio


def test_whole_job_through_the_run_loop(weights_dir: Path, tmp_path: Path) -> None:
    from pipeline.media.probe import probe
    from pipeline.run import run

    video = media.face_video(tmp_path / "face.mp4", seconds=0.6)
    audio = media.write_wav(tmp_path / "speech.wav", media.speech_like(0.6))
    result = run(video, audio, tmp_path / "out.mp4", options=RunOptions(model="latentsync", device="cpu"))
    assert result.model_used == "latentsync" and result.model_reason == "latentsync requested"
    assert result.frames == 15 and result.frames_without_face == 0
    assert result.checkpoint["source"] == "latentsync_dir"
    assert result.checkpoint["files"]["latentsync_vae"]["config"] == str(weights_dir / "vae" / "config.json")
    assert probe(tmp_path / "out.mp4").video is not None


def test_cli_runs_latentsync(weights_dir: Path, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    video = media.face_video(tmp_path / "face.mp4", seconds=0.4)
    audio = media.write_wav(tmp_path / "speech.wav", media.speech_like(0.4))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LIPSYNC_TORCH_THREADS": "1"}  # the fixture set the folder
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(video), str(audio), "-o",
                           str(tmp_path / "out.mp4"), "--model", "latentsync", "--device", "cpu", "--json"],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["model_used"] == "latentsync" and out["frames"] == 10
    assert (tmp_path / "out.mp4").stat().st_size > 0
