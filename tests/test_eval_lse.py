"""LSE-D / LSE-C / AV offset against the reference implementation, and SyncNet loading.

The reference is PyPI ``syncnet-python`` (requirements-ref.txt, installed --no-deps). Its
package ``__init__`` imports scenedetect, which is not installed, so the test loads its two
files ``SyncNetModel.py`` and ``SyncNetInstance.py`` directly by path. ``evaluate(opt)``
reads ``opt.tmp_dir/*.jpg`` (sorted) and ``opt.tmp_dir/audio.wav``; the test writes the
crops there as JPEG and feeds our ``eval.lse.evaluate`` the frames decoded back from those
same JPEGs with ``cv2.imread`` (as the reference does), plus the same int16 samples.

The SyncNet weights are a randomly initialised state_dict (random BatchNorm statistics
included) saved in the published ``syncnet_v2.model`` format: the real weights are on the
Hugging Face Hub, which no test machine can reach. Random weights compare the algorithms
only; they are never shown as a score.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.io import wavfile

from eval import lse
from eval.syncnet import load_syncnet
from pipeline.errors import WeightsInvalid, WeightsUnavailable
from required import skip_or_fail

N_FRAMES = 24  # 0.96 s at 25 fps: 19 windows


def _reference_module(name: str) -> types.ModuleType:
    spec = importlib.util.find_spec("syncnet_python")
    if spec is None or not spec.submodule_search_locations:
        skip_or_fail("syncnet-python is not installed (pip install --no-deps -r requirements-ref.txt)")
    path = Path(next(iter(spec.submodule_search_locations))) / f"{name}.py"
    mod_spec = importlib.util.spec_from_file_location(f"_ref_syncnet_{name}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _random_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    ref = _reference_module("SyncNetModel").S(num_layers_in_fc_layers=1024)
    state = ref.state_dict()
    for k, v in state.items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn_like(v) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(torch.rand_like(v) + 0.5)
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(_random_state(7), path)
    return path


def _clip(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """Crops (as the reference will read them back) and int16 audio, written into ``tmp``."""
    rng = np.random.default_rng(3)
    base = cv2.resize(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), (224, 224))
    for i in range(N_FRAMES):
        frame = np.roll(base, 3 * i, axis=0)
        frame[140:170, 80:150] = 40 + 8 * (i % 6)  # a "mouth" that changes
        cv2.imwrite(str(tmp / f"{i + 1:06d}.jpg"), frame)
    t = np.arange(int(N_FRAMES / 25 * 16000)) / 16000
    audio = (8000 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
             + rng.normal(0, 300, t.size)).astype(np.int16)
    wavfile.write(tmp / "audio.wav", 16000, audio)
    crops = np.stack([cv2.imread(str(p)) for p in sorted(tmp.glob("*.jpg"))])  # (N, 224, 224, 3)
    return crops, audio


def test_lse_equals_syncnet_python_evaluate(tmp_path: Path, checkpoint: Path) -> None:
    crops, audio = _clip(tmp_path)
    ref_model = _reference_module("SyncNetModel").S(num_layers_in_fc_layers=1024)
    ref_model.load_state_dict(torch.load(checkpoint, weights_only=True))
    instance = _reference_module("SyncNetInstance").SyncNetInstance(ref_model, device="cpu")
    opt = types.SimpleNamespace(tmp_dir=str(tmp_path), batch_size=20, vshift=15)
    ref_offset, ref_conf, ref_dist = instance.evaluate(opt)

    ours = lse.evaluate(load_syncnet(checkpoint), crops, audio)
    assert ours.windows == N_FRAMES - 5
    assert ours.offset == ref_offset
    assert ours.min_dist == pytest.approx(ref_dist, abs=1e-4)
    assert ours.confidence == pytest.approx(ref_conf, abs=1e-4)
    assert ours.confidence > 0  # a real spread over shifts, not a constant


def test_embeddings_equal_reference_model(checkpoint: Path) -> None:
    ref = _reference_module("SyncNetModel").S(num_layers_in_fc_layers=1024)
    ref.load_state_dict(torch.load(checkpoint, weights_only=True))
    ref.eval()
    ours = load_syncnet(checkpoint)
    torch.manual_seed(0)
    lips = torch.rand(2, 3, 5, 224, 224) * 255  # (B, 3, 5, 224, 224)
    auds = torch.randn(2, 1, 13, 20)  # (B, 1, 13, 20)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_lip(lips), ref.forward_lip(lips))
        torch.testing.assert_close(ours.forward_aud(auds), ref.forward_aud(auds))


def test_load_rejects_missing_and_wrong_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable):
        load_syncnet(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    torch.save({"netcnnaud.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(WeightsInvalid, match="does not match"):
        load_syncnet(bad)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsInvalid, match="could not be read"):
        load_syncnet(junk)


def test_face_crop_equals_padded_slice() -> None:
    """Our crop (no full-frame pad) equals run_pipeline's pad-then-slice, also at the border."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for cx, cy, s in ((80.0, 60.0, 20.0), (10.3, 100.7, 30.2), (150.0, 5.0, 25.0)):
        bsi = int(s * 1.8)
        padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
        my, mx = cy + bsi, cx + bsi
        face = padded[int(my - s):int(my + s * 1.8), int(mx - s * 1.4):int(mx + s * 1.4)]
        np.testing.assert_array_equal(lse.face_crop(frame, cx, cy, s), cv2.resize(face, (224, 224)))


def test_resample_indices_to_25_fps() -> None:
    np.testing.assert_array_equal(lse.resample_indices(10, 25.0), np.arange(10))
    idx = lse.resample_indices(300, 30000 / 1001)  # 10 s at 29.97 fps -> 250 frames at 25 fps
    assert len(idx) == 250 and idx[0] == 0 and idx.max() <= 299
    assert np.all(np.diff(idx) >= 1)
