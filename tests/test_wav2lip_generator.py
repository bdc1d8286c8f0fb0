"""The "wav2lip" generator: inputs and outputs against the `lipsync` package's own Wav2Lip
inference loop, one shared model per process, CUDA out-of-memory retries, the GPU lane,
and a random-weights checkpoint through the whole CLI.

The checkpoints are random networks in the published layout (no real weights can be
downloaded here); they go through the real resolution and loading code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import media
from fixtures_wav2lip import lipsync_pkg, wav2lip_checkpoint  # noqa: F401 (fixtures)
from pipeline.media.audio import load_audio, mel_chunks, melspectrogram
from pipeline.device import choose_device, gpu_lock
from pipeline.errors import LipSyncError, WeightsInvalid, WeightsUnavailable
from pipeline.faces.types import Face
from pipeline.faces.backends import make_tracker
from pipeline.generators.base import Generator
from pipeline.generators.registry import get_generator
from pipeline.options import RunOptions
from pipeline.media.probe import probe
from pipeline.run import run
from pipeline.media.decode import read_frames
from pipeline.generators.wav2lip.generator import (CPU_BATCH, KEEP_TOP, Wav2LipGenerator, _models, clear_models,
                                        crop_box, forward_batches, make_wav2lip_generator, prepare_faces,
                                        to_model_input)
from pipeline.weights import file_sha256

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
PADS = (0, 10, 0, 0)
N = 4  # frames per differential batch


@pytest.fixture(scope="module")
def gen(wav2lip_checkpoint: Path) -> Wav2LipGenerator:  # noqa: F811
    return make_wav2lip_generator(checkpoint=wav2lip_checkpoint, device="cpu", pads=PADS)


def face_frames(n: int = N) -> np.ndarray:
    return np.stack([media.face_frame(i) for i in range(n)])  # (n, 384, 384, 3)


class Collector:
    """Stands in for the cv2.VideoWriter lipsync writes its frames to."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())


def lipsync_inference(lipsync_pkg, gen: Wav2LipGenerator, frames: np.ndarray, mels: list[np.ndarray],  # noqa: F811
                      box: tuple[int, int, int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """lipsync's datagen + model + paste on our loaded weights, with the face box given (its
    face detector needs face_alignment): its model inputs, and the frames it writes."""
    x1, y1, x2, y2 = box
    ls = lipsync_pkg.LipSync(box=[y1, y2, x1, x2], wav2lip_batch_size=128, device="cpu")
    ref = lipsync_pkg.Wav2Lip()
    ref.load_state_dict(gen.model.state_dict())
    out = Collector()
    ls._perform_inference(ref.eval(), [f.copy() for f in frames], mels, out)
    img, _, _, _ = next(ls.datagen([f.copy() for f in frames], mels))
    return img, out.frames


def test_generator_interface(gen: Wav2LipGenerator, wav2lip_checkpoint: Path) -> None:  # noqa: F811
    assert isinstance(gen, Generator) and gen.name == "wav2lip" and gen.needs_faces
    assert gen.default_batch_size == CPU_BATCH and gen.device.type == "cpu" and gen.dtype == torch.float32
    info = gen.checkpoint_info()
    assert info["path"] == str(wav2lip_checkpoint) and info["sha256"] == file_sha256(wav2lip_checkpoint)


def test_matches_lipsync_inference(lipsync_pkg, gen: Wav2LipGenerator) -> None:  # noqa: F811
    """Same frames, box, mels and weights: identical 6-channel inputs, model outputs within
    1e-5, and inside the mouth region the very pixels lipsync pastes (up to a rare +-1
    where a value within 1e-5 of an integer truncates the other way)."""
    frames = face_frames()
    mels = np.random.default_rng(0).uniform(-4, 4, (N, 80, 16)).astype(np.float32)  # (N, 80, 16)
    face = Face((100.3, 92.8, 240.6, 231.2), None, 1.0)
    box = crop_box(face.box, PADS, 384, 384)
    assert box == (100, 92, 240, 241)
    theirs_in, theirs_frames = lipsync_inference(lipsync_pkg, gen, frames, list(mels), box)

    crops = [f[92:241, 100:240] for f in frames]
    mel_t, face_t = to_model_input(prepare_faces(crops), mels)
    assert torch.equal(face_t, torch.from_numpy(theirs_in.transpose(0, 3, 1, 2)).float())  # (N, 6, 96, 96)

    patches = gen.new_job(fps=25.0, width=384, height=384).process(frames, mels, [face] * N)
    assert all(p is not None and p.box == box for p in patches)
    top = int((box[3] - box[1]) * KEEP_TOP)
    for patch, theirs in zip(patches, theirs_frames):
        assert not patch.alpha[:top].any() and patch.alpha[top:].max() == 1.0
        inside = patch.alpha == 1.0
        ref = theirs[92:241, 100:240]
        diff = np.abs(patch.image.astype(int) - ref.astype(int))[inside]
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001


@pytest.mark.parametrize("source", ["synthetic", "shared"])
def test_real_audio_chain_matches_lipsync(lipsync_pkg, gen: Wav2LipGenerator, source: str,  # noqa: F811
                                          request: pytest.FixtureRequest) -> None:
    """Audio file -> mel -> 80x16 windows -> model, ours against lipsync's audio module and
    chunking: the predictions agree within 1e-5 (float) on every window."""
    if source == "shared":
        wav = load_audio(request.getfixturevalue("shared_media") / "speech_44k.mp3")[: 16000 * 2]
    else:
        wav = media.speech_like(1.5, seed=4)
    fps = 30000 / 1001
    theirs = np.stack(lipsync_pkg.LipSync()._split_mel_chunks(lipsync_pkg.audio.melspectrogram(wav), fps))
    ours = mel_chunks(melspectrogram(wav), fps, len(theirs))  # (n, 80, 16)
    pick = np.linspace(0, len(ours) - 1, N).astype(int)
    faces = prepare_faces([f[92:241, 100:240] for f in face_frames()])
    ref = lipsync_pkg.Wav2Lip()
    ref.load_state_dict(gen.model.state_dict())
    with torch.inference_mode():
        a = gen.model(*to_model_input(faces, ours[pick]))
        b = ref.eval()(*to_model_input(faces, theirs[pick].astype(np.float32)))
    assert float((a - b).abs().max()) < TOL


def test_frames_without_usable_face_are_left_alone(gen: Wav2LipGenerator) -> None:
    frames = face_frames(3)
    mels = np.zeros((3, 80, 16), np.float32)
    faces = [None, Face((10.0, 10.0, 14.0, 14.0), None, 1.0), Face((370.0, 300.0, 500.0, 420.0), None, 1.0)]
    patches = gen.new_job(fps=25.0, width=384, height=384).process(frames, mels, faces)
    assert patches[0] is None and patches[1] is None  # no face; a 4x14 px crop
    assert patches[2] is not None and patches[2].box == (370, 300, 384, 384)  # clipped to the frame
    with pytest.raises(ValueError, match="differ in length"):
        gen.new_job(fps=25.0, width=384, height=384).process(frames, mels[:2], faces)


# ---- one model per process -----------------------------------------------------------------

def test_one_model_shared_by_threads(wav2lip_checkpoint: Path) -> None:  # noqa: F811
    clear_models()
    made: list[Wav2LipGenerator] = []
    threads = [threading.Thread(target=lambda: made.append(get_generator(
        "wav2lip", checkpoint=wav2lip_checkpoint, device="cpu", pads=PADS))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 3 and len({id(g.model) for g in made}) == 1 and len(_models) == 1
    again = make_wav2lip_generator(checkpoint=wav2lip_checkpoint, device="cpu")  # the same model again
    assert again.model is made[0].model and len(_models) == 1


def test_invalid_checkpoint_is_not_cached(tmp_path: Path, gen: Wav2LipGenerator) -> None:
    bad = tmp_path / "wav2lip.pth"
    torch.save({"state_dict": {"module.nothing": torch.zeros(1)}}, bad)
    before = _models.keys()
    with pytest.raises(WeightsInvalid, match="unexpected key 'nothing'"):
        make_wav2lip_generator(checkpoint=bad, device="cpu")
    assert _models.keys() == before


def test_no_weights_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LIPSYNC_WAV2LIP_CHECKPOINT", raising=False)
    with pytest.raises(WeightsUnavailable, match="Wav2Lip generator weights not found"):
        get_generator("wav2lip", checkpoint=None, device="cpu", pads=PADS)


def test_device_choice() -> None:
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(LipSyncError, match="CUDA is not available"):
            choose_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        choose_device("tpu")


# ---- batching, the GPU lane and out-of-memory retries --------------------------------------

class OomAbove:
    """The real model, made to raise CUDA's out-of-memory error on batches above ``limit``
    frames (no GPU here to run out of memory); records batch sizes and whether the GPU lane
    was held (another thread could not take it) during each call."""

    def __init__(self, model: torch.nn.Module, limit: int) -> None:
        self.model, self.limit = model, limit
        self.sizes: list[int] = []
        self.lane_held: list[bool] = []

    def __call__(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(face))
        probe_result: list[bool] = []
        t = threading.Thread(target=lambda: probe_result.append(gpu_lock().acquire(blocking=False)))
        t.start()
        t.join()
        self.lane_held.append(not probe_result[0])
        if len(face) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(mel, face)


def test_oom_halves_the_batch(gen: Wav2LipGenerator) -> None:
    faces = prepare_faces([f[92:241, 100:240] for f in face_frames(3)])  # (3, 96, 96, 6)
    mels = np.random.default_rng(1).uniform(-4, 4, (3, 80, 16)).astype(np.float32)
    plain, size = forward_batches(gen.model, faces, mels, batch_size=16)
    assert size == 16 and plain.shape == (3, 96, 96, 3) and plain.dtype == np.uint8
    flaky = OomAbove(gen.model, limit=1)
    retried, size = forward_batches(flaky, faces, mels, batch_size=4)
    assert size == 1 and flaky.sizes == [3, 2, 1, 1, 1]
    assert all(flaky.lane_held)
    np.testing.assert_array_equal(retried, plain)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        forward_batches(OomAbove(gen.model, limit=0), faces[:1], mels[:1], batch_size=2)


# ---- the whole pipeline through the CLI ------------------------------------------------------

def test_cli_end_to_end(face_mp4: Path, synth_dir: Path, tmp_path: Path, wav2lip_checkpoint: Path) -> None:  # noqa: F811
    """`python -m pipeline run ... --model wav2lip --checkpoint FILE`: checked structurally
    (streams, size, duration, which checkpoint), and against the passthrough model's output
    of the same inputs: the frame above the mouth patch is the same, the mouth is not."""
    audio = media.write_wav(synth_dir / "speech_1s.wav", media.speech_like(1.0, seed=2))
    out = tmp_path / "out.mp4"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LIPSYNC_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(face_mp4), str(audio), "-o", str(out),
                           "--model", "wav2lip", "--checkpoint", str(wav2lip_checkpoint), "--device", "cpu",
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["model_used"] == "wav2lip" and res["frames"] == 25
    assert res["checkpoint"]["path"] == str(wav2lip_checkpoint)
    assert res["checkpoint"]["sha256"] == file_sha256(wav2lip_checkpoint)
    info = probe(out)
    assert info.video.codec == "h264" and info.audio is not None and info.video.display_size == (384, 384)
    assert abs(info.duration_s - 1.0) < 0.1

    run(face_mp4, audio, tmp_path / "plain.mp4", options=RunOptions(model="passthrough"))
    plain = list(read_frames(tmp_path / "plain.mp4"))
    got = list(read_frames(out))
    assert len(got) == len(plain) == 25
    (face,) = make_tracker("dlib").detect(plain[0])[:1]
    x1, y1, x2, y2 = crop_box(face.box, PADS, 384, 384)
    keep = int(y1 + KEEP_TOP * (y2 - y1)) - 6  # rows above the patch (the face moves a few px)
    mouth = (slice(int(y1 + 0.65 * (y2 - y1)), y2 - 6), slice(x1 + 15, x2 - 15))
    for a, b in zip(plain[::6], got[::6]):
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))  # (384, 384, 3)
        assert d[:keep].mean() < 0.5  # the same pixels through the same encoder
        assert d[mouth].mean() > 8.0  # random weights redraw the mouth
