"""The LatentSync UNet against the official one: outputs of the small random UNet, the full-size
key layout, and strict loading that refuses any checkpoint that does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures_latentsync import TOLERANCE, max_abs, reference, small_unet  # noqa: F401 (fixtures)

from pipeline.errors import WeightsInvalid, WeightsUnavailable
from pipeline.generators.latentsync import build_unet, config_for_checkpoint, config_from_dict, load_config, load_unet


@pytest.mark.parametrize("case", ["cfg_chunk16", "tail5"])
def test_small_unet_reproduces_official_outputs(small_unet: torch.nn.Module, reference: Path, case: str) -> None:
    c = torch.load(reference / "unet_small_cases.pt", weights_only=True)[case]
    with torch.no_grad():
        out = small_unet(c["sample"], c["timestep"], c["encoder_hidden_states"])
    assert out.shape == c["output"].shape
    assert max_abs(out, c["output"]) < TOLERANCE


def test_full_size_layout_equals_the_published_keys(reference: Path) -> None:
    expected = json.loads((reference / "unet_keys_full.json").read_text())["keys"]
    model = build_unet(config_from_dict())  # meta device: nothing allocated
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(got) == len(expected) == 1246
    assert list(got.items()) == list(expected.items())  # same keys, shapes and order
    assert next(model.parameters()).is_meta


def test_builtin_config_is_the_official_one(reference: Path) -> None:
    assert load_config(reference / "unet_config_full.json") == config_from_dict()


def test_config_beside_the_checkpoint_overrides_the_builtin(reference: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "latentsync_unet.pt"
    ckpt.touch()
    assert config_for_checkpoint(ckpt) == config_from_dict()
    shutil.copy(reference / "unet_small_config.json", tmp_path / "unet_config.json")
    assert config_for_checkpoint(ckpt).block_out_channels == (32, 64, 96, 96)


def test_unknown_block_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unet_config.json"
    path.write_text(json.dumps({"up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "Nope", "UpBlock3D"]}))
    with pytest.raises(WeightsInvalid, match=r"unet_config\.json.*Nope"):
        load_config(path)


@pytest.fixture(scope="module")
def small_state(reference: Path) -> dict[str, torch.Tensor]:
    return torch.load(reference / "unet_small.pt", weights_only=True)["state_dict"]


def _save(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "latentsync_unet.pt") -> Path:
    path = tmp_path / name
    torch.save({"state_dict": state, "global_step": 0}, path)
    return path


def _load(reference: Path, path: Path) -> torch.nn.Module:
    return load_unet(reference / "unet_small_config.json", path)


def test_missing_key_is_named(reference: Path, tmp_path: Path, small_state: dict) -> None:
    key = "up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    path = _save(tmp_path, {k: v for k, v in small_state.items() if k != key})
    with pytest.raises(WeightsInvalid, match=rf"latentsync_unet\.pt: missing key '{key}'"):
        _load(reference, path)


def test_unexpected_key_is_named(reference: Path, tmp_path: Path, small_state: dict) -> None:
    path = _save(tmp_path, {**small_state, "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight":
                            torch.zeros(32, 32)})
    with pytest.raises(WeightsInvalid, match=r"latentsync_unet\.pt: unexpected key "
                                             r"'down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn_temp"):
        _load(reference, path)


def test_wrong_shape_is_named(reference: Path, tmp_path: Path, small_state: dict) -> None:
    path = _save(tmp_path, {**small_state, "conv_in.weight": torch.zeros(32, 9, 3, 3)})  # a 9-channel inpainting UNet
    with pytest.raises(WeightsInvalid, match=r"latentsync_unet\.pt: key 'conv_in\.weight' has shape \[32, 9, 3, 3\], "
                                             r"the model expects \[32, 13, 3, 3\]"):
        _load(reference, path)


def test_truncated_file_is_refused(reference: Path, tmp_path: Path) -> None:
    data = (reference / "unet_small.pt").read_bytes()
    path = tmp_path / "latentsync_unet.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsInvalid, match=r"latentsync_unet\.pt: not a readable PyTorch checkpoint"):
        _load(reference, path)


def test_wrong_layout_and_missing_file_are_refused(reference: Path, tmp_path: Path, small_state: dict) -> None:
    path = tmp_path / "bare.pt"
    torch.save(small_state, path)  # a bare state dict, not {"state_dict": ...}
    with pytest.raises(WeightsInvalid, match=r"bare\.pt: has no 'state_dict' entry"):
        _load(reference, path)
    with pytest.raises(WeightsUnavailable, match=r"absent\.pt"):
        _load(reference, tmp_path / "absent.pt")


def test_loaded_unet_is_fp32_eval_and_frozen(small_unet: torch.nn.Module) -> None:
    assert small_unet.dtype == torch.float32
    assert not small_unet.training
    assert not any(p.requires_grad for p in small_unet.parameters())
    assert not any(t.is_meta for t in small_unet.state_dict().values())
