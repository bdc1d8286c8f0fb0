"""The LatentSync VAE found anywhere loads: from the LatentSync folder, the models folder or a Hub
cache, with the config.json beside its weights where there is one (it wins) and the built-in
``stabilityai/sd-vae-ft-mse`` config otherwise, strictly; the reports and the job record say
which config was used.

The VAEs are random, saved by diffusers' ``save_pretrained`` in the published format: the tiny
one of ``fixtures_latentsync`` (a config of its own) and ``sd_vae``, of the published shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import media
import numpy as np
import pytest
import torch
from fixtures_latentsync import SD_VAE_PARAMETERS, reference, sd_vae, tiny_vae, weights_dir  # noqa: F401 (fixtures)
from safetensors.torch import load_file, save_file

from pipeline.errors import WeightsInvalid
from pipeline.faces.types import Face
from pipeline.generators.latentsync.vae import DOWNSCALE, load_vae
from pipeline.generators.latentsync.vae_config import (BUILTIN_SOURCE, CONFIG_NAME, SD_VAE_FT_MSE_CONFIG,
                                                        WEIGHTS_NAME)
from pipeline.weights import LATENTSYNC_DIR_ENV, LATENTSYNC_SPECS, LATENTSYNC_VAE, resolve
from pipeline.weights_report import format_report, weights_report

SNAPSHOT = "c" * 40  # the commit a Hub cache snapshot is named by


@pytest.fixture(autouse=True)
def places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty LatentSync folder, models folder and Hub cache; offline; no explicit paths."""
    for spec in LATENTSYNC_SPECS:
        monkeypatch.delenv(spec.env_path, raising=False)
    monkeypatch.setenv(LATENTSYNC_DIR_ENV, str(tmp_path / "latentsync"))
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def link(target: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def hub_snapshot(cache: Path, files: dict[str, Path]) -> Path:
    """``files`` (name -> source) laid out as huggingface_hub caches stabilityai/sd-vae-ft-mse."""
    repo = cache / "models--stabilityai--sd-vae-ft-mse"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    for name, source in files.items():
        link(source, repo / "snapshots" / SNAPSHOT / name)
    return repo / "snapshots" / SNAPSHOT


def vae_row() -> dict:
    return {r["name"]: r for r in weights_report()}[LATENTSYNC_VAE.name]


def test_the_builtin_config_is_the_published_one(sd_vae: Path) -> None:
    from diffusers import AutoencoderKL

    built = AutoencoderKL.from_config(SD_VAE_FT_MSE_CONFIG)
    assert sum(p.numel() for p in built.parameters()) == SD_VAE_PARAMETERS
    saved = json.loads((sd_vae / CONFIG_NAME).read_text())
    assert {k: saved[k] for k in SD_VAE_FT_MSE_CONFIG} == SD_VAE_FT_MSE_CONFIG
    assert 2 ** (len(SD_VAE_FT_MSE_CONFIG["block_out_channels"]) - 1) == DOWNSCALE


def test_models_folder_vae_without_config_loads_with_the_builtin_config(places: Path, sd_vae: Path) -> None:
    weights = link(sd_vae / WEIGHTS_NAME, places / "models" / WEIGHTS_NAME)
    hit = resolve(LATENTSYNC_VAE)
    assert (hit.path, hit.source) == (str(weights), "models_dir")
    vae = load_vae(hit.path)
    assert vae.config_source == BUILTIN_SOURCE
    saved = load_file(sd_vae / WEIGHTS_NAME)
    loaded = vae.vae.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    latents = vae.encode(torch.zeros(1, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4, 8, 8) and vae.decode(latents).shape == (1, 3, 64, 64)
    row = vae_row()
    assert (row["where"], row["source"], row["config"]) == (str(weights), "models_dir", BUILTIN_SOURCE)
    assert f"config {BUILTIN_SOURCE}" in format_report(weights_report())
    from ui.monitor import weights_table  # the System tab says the same

    shown = weights_table().set_index("model").loc[LATENTSYNC_VAE.label, "where / why not"]
    assert shown == f"{weights} (models_dir); config: {BUILTIN_SOURCE}", shown


@pytest.mark.parametrize("cache_env", ["HF_HUB_CACHE", "HF_HOME"])
@pytest.mark.parametrize("config", ["none beside", "its own"])
def test_hub_cache_vae_with_and_without_config(places: Path, sd_vae: Path, monkeypatch: pytest.MonkeyPatch,
                                               cache_env: str, config: str) -> None:
    """Only the weights in the cache: the built-in config. The repo's config.json beside them
    (here a tiny VAE's, which loads with nothing else): that config."""
    cache = places / "hub"
    if cache_env == "HF_HOME":
        monkeypatch.delenv("HF_HUB_CACHE")
        monkeypatch.setenv("HF_HOME", str(places / "home"))
        cache = places / "home" / "hub"
    if config == "its own":
        tiny_vae(places / "tiny")
        snapshot = hub_snapshot(cache, {n: places / "tiny" / n for n in (WEIGHTS_NAME, CONFIG_NAME)})
        expected = str(snapshot / CONFIG_NAME)
    else:
        snapshot = hub_snapshot(cache, {WEIGHTS_NAME: sd_vae / WEIGHTS_NAME})
        expected = BUILTIN_SOURCE
    hit = resolve(LATENTSYNC_VAE)
    assert (hit.path, hit.source) == (str(snapshot / WEIGHTS_NAME), "hub_cache")
    assert load_vae(hit.path).config_source == expected
    assert (vae_row()["source"], vae_row()["config"]) == ("hub_cache", expected)


def test_a_folders_own_config_wins(places: Path, sd_vae: Path) -> None:
    """Beside the published-shape weights, a config.json of other shapes is used (and refused with
    both named), not the built-in one; the tiny weights alone are refused with the built-in one."""
    odd = places / "odd"
    tiny_vae(places / "tiny")
    link(sd_vae / WEIGHTS_NAME, odd / WEIGHTS_NAME)
    link(places / "tiny" / CONFIG_NAME, odd / CONFIG_NAME)
    refusal = f"VAE {WEIGHTS_NAME} with {odd / CONFIG_NAME}: not a usable AutoencoderKL .*size mismatch"
    with pytest.raises(WeightsInvalid, match=refusal):
        load_vae(odd)
    assert load_vae(places / "tiny").config_source == str(places / "tiny" / CONFIG_NAME)
    alone = link(places / "tiny" / WEIGHTS_NAME, places / "alone" / "tiny_vae.safetensors")
    with pytest.raises(WeightsInvalid, match="with built-in stabilityai/sd-vae-ft-mse config .*size mismatch"):
        load_vae(alone)


def test_keys_load_strictly(places: Path) -> None:
    """A key missing or unexpected is refused (diffusers would only warn); the attention names of
    older diffusers files (query / key / value / proj_attn) load as the current ones."""
    folder = places / "vae"
    tiny_vae(folder)
    weights = folder / WEIGHTS_NAME
    good = load_file(weights)
    save_file({k: v for k, v in good.items() if k != "encoder.conv_in.weight"}, weights, metadata={"format": "pt"})
    with pytest.raises(WeightsInvalid, match="missing key 'encoder.conv_in.weight'"):
        load_vae(folder)
    save_file({**good, "extra.weight": torch.zeros(1)}, weights, metadata={"format": "pt"})
    with pytest.raises(WeightsInvalid, match="unexpected key 'extra.weight'"):
        load_vae(folder)
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in good.items():
        for new, old in old_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        renamed[key] = value
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in renamed
    save_file(renamed, weights, metadata={"format": "pt"})
    loaded = load_vae(folder).vae.state_dict()
    assert all(torch.equal(loaded[k], good[k]) for k in good)


def test_the_generator_takes_the_vae_from_the_models_folder(weights_dir: Path, sd_vae: Path, places: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A LatentSync folder without vae/: the published-shape VAE from the models folder, with the
    built-in config, generates a face, and the job's checkpoint facts say so."""
    from pipeline.generators.registry import get_generator

    root = places / "latentsync"
    for place in ("latentsync_unet.pt", "unet_config.json", "whisper"):
        link(weights_dir / place, root / place)
    link(sd_vae / WEIGHTS_NAME, places / "models" / WEIGHTS_NAME)
    monkeypatch.setenv(LATENTSYNC_DIR_ENV, str(root))
    gen = get_generator("latentsync", device="cpu")
    vae = gen.checkpoint_info()["files"]["latentsync_vae"]
    assert (vae["source"], vae["config"]) == ("models_dir", BUILTIN_SOURCE)
    frame = media.face_frame(0)[None]  # (1, H, W, 3)
    h, w = frame.shape[1:3]
    landmarks = np.zeros((68, 2), np.float32)
    landmarks[17:22], landmarks[22:27], landmarks[27:36] = (w * 0.38, h * 0.4), (w * 0.62, h * 0.4), (w * 0.5, h * 0.55)
    face = Face(box=(w * 0.25, h * 0.25, w * 0.75, h * 0.85), landmarks=landmarks, score=1.0)
    wav = media.write_wav(places / "speech.wav", media.speech_like(0.2))
    job = gen.new_job(fps=25.0, width=w, height=h, audio=wav)
    (patch,) = job.process(frame, np.zeros((1, 80, 16), np.float32), [face])
    assert patch is not None and patch.image.shape[:2] == patch.alpha.shape
