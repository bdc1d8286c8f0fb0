"""The Wav2Lip network and its checkpoint loader: differential tests against the `lipsync`
package's Wav2Lip (an independent implementation of the same network), every checkpoint
layout the published files come in, and every way a checkpoint can be rejected.

No real weights exist here: the checkpoints are random networks saved in the published
layout (tests/fixtures_wav2lip.py), loaded through the real loading code.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from fixtures_wav2lip import (lipsync_pkg, published_extras, tiny_state_dict,  # noqa: F401 (fixtures)
                              wav2lip_checkpoint)
from pipeline.errors import WeightsInvalid
from pipeline.generators.wav2lip.model import Wav2Lip, expected_shapes, load_wav2lip

TOL = 1e-5  # max abs difference between two float32 implementations of the same network


def reference_from_file(lipsync_pkg, path: Path) -> torch.nn.Module:  # noqa: F811
    """lipsync's Wav2Lip with the file's weights, loaded the way Wav2Lip's inference.py does:
    torch.load, take ["state_dict"], drop "module." from each key, load_state_dict."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.replace("module.", ""): v for k, v in ckpt["state_dict"].items()}
    model = lipsync_pkg.Wav2Lip()
    model.load_state_dict(state)
    return model.eval()


def random_batch(n: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn((n, 1, 80, 16), generator=gen) * 2  # (n, 1, 80, 16), mel range is [-4, 4]
    face = torch.rand((n, 6, 96, 96), generator=gen)  # (n, 6, 96, 96) in [0, 1]
    face[:, :3, 48:] = 0  # the masked lower half, as the generator prepares it
    return mel, face


# ---- the network ----------------------------------------------------------------------------

def test_keys_and_shapes_match_lipsync(lipsync_pkg) -> None:  # noqa: F811
    ours = {k: tuple(v) for k, v in expected_shapes().items()}
    theirs = {k: tuple(v.shape) for k, v in lipsync_pkg.Wav2Lip().state_dict().items()}
    assert list(ours) == list(theirs)  # same keys in the same order
    assert ours == theirs
    assert len(ours) == 352 and sum(torch.Size(s).numel() for s in ours.values()) == 36_320_837


def test_forward_matches_lipsync(lipsync_pkg, wav2lip_checkpoint: Path) -> None:  # noqa: F811
    ours = load_wav2lip(wav2lip_checkpoint)
    theirs = reference_from_file(lipsync_pkg, wav2lip_checkpoint)
    mel, face = random_batch(6)
    with torch.inference_mode():
        a, b = ours(mel, face), theirs(mel, face)
    assert a.shape == b.shape == (6, 3, 96, 96)
    assert float((a - b).abs().max()) < TOL
    assert float(a.std()) > 0.01  # the random network's output is not a constant


def test_forward_rejects_wrong_shapes() -> None:
    model = Wav2Lip().eval()
    mel, face = random_batch(1)
    with pytest.raises(ValueError, match="mel must be"):
        model(mel[:, :, :, :8], face)
    with pytest.raises(ValueError, match="face must be"):
        model(mel, face[:, :3])


# ---- checkpoint layouts ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_state(wav2lip_checkpoint: Path) -> OrderedDict[str, torch.Tensor]:  # noqa: F811
    ckpt = torch.load(wav2lip_checkpoint, map_location="cpu", weights_only=True)
    return OrderedDict((k.removeprefix("module."), v) for k, v in ckpt["state_dict"].items())


def _same_weights(model: Wav2Lip, state: OrderedDict[str, torch.Tensor]) -> bool:
    loaded = model.state_dict()
    return list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_published_layout_loads_every_tensor(wav2lip_checkpoint: Path, reference_state) -> None:  # noqa: F811
    model = load_wav2lip(wav2lip_checkpoint)
    assert _same_weights(model, reference_state)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("layout", ["wrapped_no_prefix", "bare_prefixed", "bare"])
def test_other_layouts_load_the_same(tmp_path: Path, reference_state, layout: str) -> None:
    prefix = "module." if layout == "bare_prefixed" else ""
    state = OrderedDict((prefix + k, v) for k, v in reference_state.items())
    path = tmp_path / f"{layout}.pth"
    torch.save({"state_dict": state} if layout.startswith("wrapped") else state, path)
    assert _same_weights(load_wav2lip(path), reference_state)


def test_zip_checkpoints_are_memory_mapped_and_legacy_ones_still_load(
        tmp_path: Path, wav2lip_checkpoint: Path, reference_state) -> None:  # noqa: F811
    """A zip-format file's tensors stay mapped from the file (assigned to the model: no
    second copy in memory); the legacy format (torch < 1.6, which the published files may
    use) cannot be mapped and is read whole, with the same weights."""
    import psutil

    model = load_wav2lip(wav2lip_checkpoint)
    maps = {m.path for m in psutil.Process().memory_maps()}
    assert str(wav2lip_checkpoint) in maps  # the weights are the file's pages
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in reference_state.items())},
               legacy, _use_new_zipfile_serialization=False)
    assert _same_weights(load_wav2lip(legacy), reference_state)
    assert _same_weights(model, reference_state)


# ---- rejection: WeightsInvalid naming the first bad key -----------------------------------

FIRST = "face_encoder_blocks.0.0.conv_block.0.weight"
LAST = "output_block.1.bias"


def _save(tmp_path: Path, obj: object, name: str = "bad.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _invalid(path: Path) -> str:
    with pytest.raises(WeightsInvalid) as info:
        load_wav2lip(path)
    return str(info.value)


def test_missing_key(tmp_path: Path) -> None:
    state = tiny_state_dict()
    del state["module." + LAST]
    msg = _invalid(_save(tmp_path, {"state_dict": state, **published_extras()}))
    assert f"missing key '{LAST}'" in msg and "bad.pth" in msg


def test_unexpected_key_is_named_first(tmp_path: Path) -> None:
    state = tiny_state_dict()
    state["module.lip_refiner.weight"] = torch.zeros(3)
    del state["module." + LAST]
    msg = _invalid(_save(tmp_path, {"state_dict": state}))
    assert "unexpected key 'lip_refiner.weight'" in msg and "(and 1 more)" in msg


def test_wrong_shape(tmp_path: Path) -> None:
    state = tiny_state_dict()
    state["module." + LAST] = torch.zeros(4)
    msg = _invalid(_save(tmp_path, {"state_dict": state}))
    assert f"key '{LAST}' has shape (4,), expected (3,)" in msg


def test_syncnet_checkpoint_is_not_a_generator(tmp_path: Path) -> None:
    state = OrderedDict([("netcnnaud.0.weight", torch.zeros(64, 1, 3, 3)), ("netfcaud.0.weight", torch.zeros(512, 512))])
    msg = _invalid(_save(tmp_path, state))
    assert "unexpected key 'netcnnaud.0.weight'" in msg


@pytest.mark.parametrize(("value", "why"), [
    (lambda shape: [0.0], "is a list, not a tensor"),
    (lambda shape: torch.zeros(shape, dtype=torch.int32), "dtype torch.int32"),
    (lambda shape: torch.full(shape, float("nan")), "NaN or infinite"),
])
def test_bad_tensor_values(tmp_path: Path, value, why: str) -> None:
    state = tiny_state_dict()
    state["module." + FIRST] = value(expected_shapes()[FIRST])
    msg = _invalid(_save(tmp_path, {"state_dict": state}))
    assert f"key '{FIRST}'" in msg and why in msg


def test_key_with_and_without_prefix(tmp_path: Path) -> None:
    state = tiny_state_dict()
    state[FIRST] = state["module." + FIRST]
    assert f"'{FIRST}' appears both with and without" in _invalid(_save(tmp_path, state))


@pytest.mark.parametrize("obj", [{}, {"state_dict": {}}, {"state_dict": [1, 2]}, [torch.zeros(3)]])
def test_no_state_dict(tmp_path: Path, obj: object) -> None:
    assert "holds no state_dict" in _invalid(_save(tmp_path, obj))


def test_truncated_file(tmp_path: Path) -> None:
    good = _save(tmp_path, {"state_dict": tiny_state_dict()}, "good.pth")
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    msg = _invalid(bad)
    assert "truncated.pth cannot be read" in msg and "download it again" in msg


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "wav2lip.pth"
    path.write_text("<html>404 Not Found</html>")
    assert "cannot be read as a PyTorch checkpoint" in _invalid(path)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint that needs arbitrary classes to unpickle never runs."""
    path = tmp_path / "whole_model.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": OrderedDict(), "hook": Path("/etc/passwd")}, f)
    assert "weights_only=True" in _invalid(path)


def test_rejection_never_returns_a_model(tmp_path: Path, reference_state) -> None:
    """A file that is right up to its very last tensor still yields no model at all."""
    state = OrderedDict(("module." + k, v) for k, v in reference_state.items())
    state["module." + LAST] = torch.zeros(2)
    path = _save(tmp_path, {"state_dict": state})
    result = None
    with pytest.raises(WeightsInvalid, match=LAST):
        result = load_wav2lip(path)
    assert result is None
