"""The end-to-end proof of issue 16 on the CPU: ``python -m jobs run ... --model latentsync --crf 0``
on a real clip (16 frames cut from ../shared/media/hdtf_aoc_512.mp4; skipped where absent) with a
folder of small random models in the published layouts (``weights_dir``: they stand in for the
Hub weights, which cannot be downloaded here), 2 DDIM steps; the refusals (bad checkpoints, a CPU
estimate past the time limit) recorded as failed jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import media
import numpy as np
import pytest
import torch
from fixtures_latentsync import reference, weights_dir  # noqa: F401 (fixtures)

from pipeline.faces.tracking import track_video
from pipeline.media.ffmpeg import ffmpeg_exe
from pipeline.media.probe import probe
from pipeline.options import RunOptions
from pipeline.weights import LATENTSYNC_DIR_ENV, file_sha256
from storage.jobs import JobStore

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "media" / "hdtf_aoc_512.mp4"
CLIP_FRAMES = 16  # 0.64 s at 25 fps
SPEECH_S = 0.6  # 15 output frames: the audio is shorter than the clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SOURCE.is_file():
        pytest.skip(f"real media not found at {SOURCE}")
    out = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(SOURCE), "-frames:v",
                    str(CLIP_FRAMES), "-an", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(out)],
                   check=True)
    return out


def _jobs_run(*args: str, data_dir: Path, latentsync_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIPSYNC_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
           LATENTSYNC_DIR_ENV: str(latentsync_dir)}
    return subprocess.run([sys.executable, "-m", "jobs", "run", *args, "--model", "latentsync", "--device", "cpu",
                           "--no-score"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _yuv_frames(path: Path, width: int, height: int) -> np.ndarray:
    """Every frame as raw I420 bytes: (n, height * 3 // 2, width) uint8."""
    raw = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "yuv420p", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height * 3 // 2, width)


def _eye_line(clip: Path) -> int:
    """A frame row above which every frame shows only the upper face (forehead, brows, eyes): 40%
    of the way from the brows down to the nose centre, the highest over the clip (the redrawn
    region's feather starts below 60%)."""
    track = track_video(clip, probe(clip), options=RunOptions(), fps=25.0, n_track=CLIP_FRAMES, landmarks=True)
    rows = []
    for i in range(CLIP_FRAMES):
        lm = track.at(i).landmarks
        brows, nose = lm[17:27, 1].mean(), lm[27:36, 1].mean()
        rows.append(brows + 0.4 * (nose - brows))
    return int(min(rows))


def test_latentsync_job_end_to_end(clip: Path, weights_dir: Path, tmp_path: Path) -> None:
    audio = media.write_wav(tmp_path / "speech.wav", media.speech_like(SPEECH_S, pattern=((1.0, True),)))
    out = tmp_path / "out.mp4"
    proc = _jobs_run(str(clip), str(audio), "-o", str(out), "--crf", "0", "--steps", "2", "--json",
                     data_dir=tmp_path / "data", latentsync_dir=weights_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    info = probe(out)
    assert res["model_used"] == "latentsync" and res["frames"] == 15
    assert info.video.fps == 25.0 and (info.video.width, info.video.height) == (512, 512)
    assert info.duration_s == pytest.approx(SPEECH_S, abs=0.05)  # the audio's length

    src, got = _yuv_frames(clip, 512, 512)[:15], _yuv_frames(out, 512, 512)
    assert got.shape == src.shape
    eye = _eye_line(clip)
    assert eye > 120  # the rows compared hold the forehead, the brows and the eyes
    assert np.array_equal(got[:, :eye], src[:, :eye])  # luma rows of the upper face: byte-identical
    assert np.array_equal(got[:, 512:512 + eye // 4], src[:, 512:512 + eye // 4])  # and their chroma (U)
    below = np.abs(got[:, eye:512].astype(int) - src[:, eye:512].astype(int))
    assert below.max() > 40 and (below.reshape(15, -1).mean(1) > 0.05).all()  # every mouth changed

    with JobStore(tmp_path / "data" / "jobs.db") as store:
        job = store.get(res["job_id"])
    assert job["status"] == "succeeded" and job["model_used"] == "latentsync"
    files = job["facts"]["checkpoint"]["files"]
    assert set(files) == {"latentsync_unet", "latentsync_whisper", "latentsync_vae"}
    for name, rec in files.items():
        assert rec["sha256"] == file_sha256(rec["path"]), name
    assert job["facts"]["checkpoint"]["sha256"] == file_sha256(reference_unet(weights_dir))
    assert job["options"]["steps"] == 2 and job["options"]["silence_keep"] is True
    settings = job["facts"]["generator_facts"]
    assert settings["steps"] == 2 and settings["guidance"] == 1.5 and settings["seed"] == 0


def reference_unet(folder: Path) -> Path:
    return (folder / "latentsync_unet.pt").resolve()


def _bad_folder(weights_dir: Path, root: Path, kind: str) -> tuple[Path, str]:
    """A copy of the LatentSync folder whose UNet is ``kind``; the text the refusal must name."""
    root.mkdir()
    for name in ("unet_config.json", "whisper", "vae"):
        (root / name).symlink_to(weights_dir / name)
    unet = root / "latentsync_unet.pt"
    good = reference_unet(weights_dir)
    if kind == "missing file":
        return root, "latentsync_unet.pt"
    if kind == "truncated":
        unet.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return root, "latentsync_unet.pt: not a readable PyTorch checkpoint"
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    key = "conv_in.weight"
    if kind == "missing key":
        del ckpt["state_dict"][key]
    else:  # wrong shape
        ckpt["state_dict"][key] = torch.zeros(3, 3)
    torch.save(ckpt, unet)
    return root, f"latentsync_unet.pt: {'missing key' if kind == 'missing key' else 'key'} {key!r}"


@pytest.mark.parametrize("kind", ["truncated", "missing file", "missing key", "wrong shape"])
def test_a_bad_checkpoint_is_refused_and_recorded(kind: str, clip: Path, weights_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder, named = _bad_folder(weights_dir, tmp_path / "bad", kind)
    audio = media.write_wav(tmp_path / "speech.wav", media.speech_like(0.2))
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path / "models"))  # no models folder to fall back on
    proc = _jobs_run(str(clip), str(audio), "-o", str(tmp_path / "o.mp4"), data_dir=tmp_path / "data",
                     latentsync_dir=folder)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and named in line
    with JobStore(tmp_path / "data" / "jobs.db") as store:
        (job,) = store.list()
    assert job["status"] == "failed" and job["error_type"] == ("WeightsUnavailable" if kind == "missing file"
                                                               else "WeightsInvalid")
    assert named in job["error_message"]


def test_a_cpu_job_past_its_time_limit_is_refused_before_it_starts(weights_dir: Path, tmp_path: Path) -> None:
    from pipeline.generators.latentsync import cost

    video = media.face_video(tmp_path / "face.mp4", seconds=0.6)
    audio = media.write_wav(tmp_path / "speech.wav", media.speech_like(0.6))
    proc = _jobs_run(str(video), str(audio), "-o", str(tmp_path / "o.mp4"), "--steps", "200", "--timeout", "30",
                     data_dir=tmp_path / "data", latentsync_dir=weights_dir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "latentsync would take an estimated" in line and "15 frames x 200 steps" in line
    assert "time limit" in line and "refused before starting" in line
    assert not (tmp_path / "o.mp4").exists()
    with JobStore(tmp_path / "data" / "jobs.db") as store:
        (job,) = store.list()
    assert job["status"] == "failed" and job["error_type"] == "JobTooSlow"

    from pipeline.generators.registry import get_generator

    gen = get_generator("latentsync", device="cpu")
    before = cost.measurements()
    first, again = gen.estimate(10), gen.estimate(20)
    assert cost.measurements() - before <= 1  # measured once per process and model
    assert again.seconds == pytest.approx(2 * first.seconds) and first.seconds > 0
    assert gen.estimate(10).basis.startswith("10 frames x 1 steps")  # the fixture's one step
