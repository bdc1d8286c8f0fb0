"""DDIM sampling with classifier-free guidance, and faces through a small random VAE and the small
random UNet. Random weights: these check the mechanics (shapes, chunking, guidance, seeds, the
mask paste), never the quality of the pictures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures_latentsync import reference, small_unet  # noqa: F401 (fixtures)

from pipeline.generators.latentsync.inference import lipsync_faces
from pipeline.generators.latentsync.mask import keep_mask, latent_mask
from pipeline.generators.latentsync.sampling import SamplingOptions, denoise, initial_noise
from pipeline.generators.latentsync.vae import FaceVae, load_vae


class RecordingUNet:
    """A stand-in UNet: records its inputs, predicts noise from the audio's mean (zero audio: zero)."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        self.calls.append((sample, t, audio))
        level = audio.mean(dim=(2, 3))[:, None, :, None, None]  # (B, 1, F, 1, 1)
        return sample[:, :4] * 0.1 + level


def _inputs(frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "noise": initial_noise(frames, (4, 4), generator=g),
        "mask": latent_mask((4, 4)),
        "masked_latents": torch.randn(frames, 4, 4, 4, generator=g),
        "ref_latents": torch.randn(frames, 4, 4, 4, generator=g),
        "audio": torch.rand(frames, 50, 384, generator=g) + 0.5,
    }


def test_chunks_channels_and_guidance_batch_order() -> None:
    unet = RecordingUNet()
    out = denoise(unet, **_inputs(34), options=SamplingOptions(steps=3, guidance=1.5))
    assert out.shape == (34, 4, 4, 4)
    assert [c[0].shape[2] for c in unet.calls] == [16] * 3 + [16] * 3 + [2] * 3  # 3 steps per chunk
    assert [int(c[1]) for c in unet.calls[:3]] == [667, 334, 1]  # DDIM "leading" spacing, steps_offset 1
    sample, _, audio = unet.calls[0]
    assert sample.shape == (2, 13, 16, 4, 4)
    assert torch.equal(audio[0], torch.zeros_like(audio[0]))  # [unconditional, audio]
    assert torch.equal(sample[0], sample[1])
    assert torch.equal(sample[0, 4], latent_mask((4, 4))[0, 0].expand(16, 4, 4))  # channel 4: the mask


def test_guidance_scales_the_audio_direction() -> None:
    inputs = _inputs(5)
    plain = denoise(RecordingUNet(), **inputs, options=SamplingOptions(steps=2, guidance=1.0))
    guided = denoise(RecordingUNet(), **inputs, options=SamplingOptions(steps=2, guidance=3.0))
    unguided_calls = RecordingUNet()
    denoise(unguided_calls, **inputs, options=SamplingOptions(steps=2, guidance=1.0))
    assert unguided_calls.calls[0][0].shape[0] == 1  # guidance 1: no unconditional half
    assert not torch.allclose(plain, guided)


def test_one_noise_frame_repeated() -> None:
    noise = initial_noise(7, (4, 4), generator=torch.Generator().manual_seed(3))
    assert noise.shape == (1, 4, 7, 4, 4)
    assert torch.equal(noise[:, :, 0], noise[:, :, 6])


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> FaceVae:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
                          layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=256)
    folder = tmp_path_factory.mktemp("vae")
    model.save_pretrained(folder)
    return load_vae(folder, slice_frames=2)


def _faces(frames: int) -> torch.Tensor:
    return torch.rand(frames, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_faces_through_vae_and_small_unet(tiny_vae: FaceVae, small_unet: torch.nn.Module) -> None:
    faces, frames = _faces(2), 2
    tokens = torch.randn(frames, 50, 384, generator=torch.Generator().manual_seed(2))
    options = SamplingOptions(steps=1, seed=7, frames_per_call=1)  # two chunks (the UNet is slow on 2 CPUs)
    first = lipsync_faces(small_unet, tiny_vae, faces, tokens, options=options)
    again = lipsync_faces(small_unet, tiny_vae, faces, tokens, options=options)
    other = lipsync_faces(small_unet, tiny_vae, faces, tokens, options=SamplingOptions(steps=1, seed=8,
                                                                                        frames_per_call=1))
    assert first.shape == (frames, 3, 256, 256)
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)  # same inputs and seed: same output
    keep = keep_mask().bool().expand_as(first)
    assert not torch.allclose(first[~keep], other[~keep])  # another seed: another mouth
    assert torch.equal(first[keep], faces[keep])  # outside the mask: the input, untouched
    assert torch.equal(other[keep], faces[keep])


def test_vae_roundtrip_shapes_and_missing_folder(tiny_vae: FaceVae, tmp_path: Path) -> None:
    from pipeline.errors import WeightsUnavailable

    latents = tiny_vae.encode(_faces(3), generator=torch.Generator().manual_seed(0))
    assert latents.shape == (3, 4, 32, 32) and latents.dtype == torch.float32
    assert tiny_vae.decode(latents).shape == (3, 3, 256, 256)
    with pytest.raises(WeightsUnavailable, match="config.json"):
        load_vae(tmp_path / "nowhere")
