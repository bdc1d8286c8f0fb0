"""The "latentsync" generator: LatentSync 1.5 behind the run loop's Generator interface.

Per job, the speech file is decoded as whisper does and encoded once (:mod:`.audio_tokens`), and
the speech gate marks the frames in silence (:mod:`.silence`); per batch, every frame with a face
is aligned to the 256 x 256 face (:mod:`.align`, its points smoothed over frames by
:mod:`.smoothing`), the frames not in silence are sampled (:func:`.inference.lipsync_faces`: 16
frames per UNet call, DDIM, guidance) and each generated face goes back as a Patch whose alpha
covers the mask's redrawn region only, faded towards the source at the edges of a silence.

Weights: :func:`pipeline.weights.resolve_latentsync` (``$LIPSYNC_LATENTSYNC_DIR``: the UNet,
``whisper/tiny.pt``, the ``vae/`` diffusers folder; each may also be found elsewhere, the VAE's
weights then read with the built-in config where no ``config.json`` lies beside them). The models
load once per process (:class:`pipeline.weights.ModelCache`). Sampling settings: keyword arguments
of the factory (the job's RunOptions steps / guidance / seed / silence_keep), else
``$LIPSYNC_LATENTSYNC_STEPS`` / ``_GUIDANCE`` / ``_SEED``, else 20 / 1.5 / 0. On the CPU,
:meth:`LatentSyncGenerator.estimate` lets the run loop refuse a job that would outlast its time
limit (:mod:`.cost`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from pipeline.device import choose_device, choose_dtype, configure_cpu_threads
from pipeline.faces.types import Face
from pipeline.generators.base import CostEstimate, Frames, Generator, GeneratorJob, check_batch
from pipeline.generators.blend import Patch
from pipeline.options import check_sampling
from pipeline.weights import ModelCache, ResolvedWeights, resolve_latentsync

from .align import align_points, face_matrix, face_patch, warp_face
from .audio_tokens import encoder_features, load_speech, tokens_at
from .cost import seconds_per_frame_step
from .inference import lipsync_faces
from .sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, FRAMES_PER_CALL, SamplingOptions
from .silence import silence_weights
from .smoothing import PointSmoother
from .unet import LatentSyncUNet, load_unet
from .vae import FaceVae, load_vae
from .whisper import WhisperEncoder, load_whisper_encoder

log = logging.getLogger(__name__)

STEPS_ENV = "LIPSYNC_LATENTSYNC_STEPS"
GUIDANCE_ENV = "LIPSYNC_LATENTSYNC_GUIDANCE"
SEED_ENV = "LIPSYNC_LATENTSYNC_SEED"
MAX_MODELS = 1  # loaded model sets kept per process: the UNet alone is 2.5 GB in fp16
PIXEL_SCALE = 127.5  # uint8 <-> [-1, 1]: x / 127.5 - 1 (the official normalisation)


@dataclass(frozen=True)
class LatentSyncModels:
    unet: LatentSyncUNet
    whisper: WhisperEncoder
    vae: FaceVae


_models: ModelCache[LatentSyncModels] = ModelCache(MAX_MODELS)


def get_models(weights: dict[str, ResolvedWeights], *, device: torch.device,
               dtype: torch.dtype) -> tuple[LatentSyncModels, Hashable]:
    """The process's models for ``weights`` on ``device``, loaded on first use (whisper in fp32),
    and their cache key."""
    key = (*((w.path, w.sha256) for w in weights.values()), str(device), dtype)

    def load() -> LatentSyncModels:
        unet = load_unet(None, weights["latentsync_unet"].path, device=device, dtype=dtype)
        whisper = load_whisper_encoder(weights["latentsync_whisper"].path, device=device)
        vae = load_vae(weights["latentsync_vae"].path, device=device, dtype=dtype)
        return LatentSyncModels(unet=unet, whisper=whisper, vae=vae)

    return _models.get(key, load), key


def sampling_options(*, steps: int | None = None, guidance: float | None = None,
                     seed: int | None = None) -> SamplingOptions:
    """The arguments given, else the environment's settings, else the official defaults."""
    env = os.environ
    steps = steps if steps is not None else int(env.get(STEPS_ENV) or DEFAULT_STEPS)
    guidance = guidance if guidance is not None else float(env.get(GUIDANCE_ENV) or DEFAULT_GUIDANCE)
    seed = seed if seed is not None else int(env.get(SEED_ENV) or 0)
    check_sampling(steps=steps, guidance=guidance, seed=seed)
    return SamplingOptions(steps=steps, guidance=guidance, seed=seed)


def to_pixels(faces: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 (256, 256, 3) faces -> (n, 3, 256, 256) float32 in [-1, 1]."""
    return torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float() / PIXEL_SCALE - 1.0  # (n, 3, 256, 256)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(n, 3, 256, 256) in [-1, 1] -> RGB uint8 (n, 256, 256, 3), rounded."""
    scaled = ((pixels.clamp(-1.0, 1.0) + 1.0) * PIXEL_SCALE).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).numpy()  # (n, 256, 256, 3)


class LatentSyncJob(GeneratorJob):
    """Per job: the speech's whisper features, the source's weight per frame (silence), the
    alignment smoother and the index of the next output frame."""

    def __init__(self, gen: LatentSyncGenerator, *, fps: float, audio: str | os.PathLike[str]) -> None:
        self.gen = gen
        self.fps = fps
        speech = load_speech(audio)  # (N,) 16 kHz
        self.features = encoder_features(gen.models.whisper, speech)  # (T, 5, 384)
        self.keep = silence_weights(speech, fps) if gen.silence_keep else np.zeros(0, np.float32)  # (n_out,)
        self.smoother = PointSmoother(fps)
        self.next_frame = 0
        self.kept_silent = 0  # frames with a face left as the source (silence)

    def _keep(self, index: int) -> float:
        """How much of the source frame ``index`` shows (0 = all generated, 1 = the source)."""
        return float(self.keep[index]) if index < len(self.keep) else 0.0

    def _aligned(self, frames: Frames, faces: Sequence[Face | None], first: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(batch index, matrix, aligned RGB face) of the frames to generate; the alignment
        points are smoothed over consecutive frames with a face (a frame without one resets)."""
        todo = []
        for i, face in enumerate(faces):
            if face is None:
                self.smoother.reset()
                continue
            matrix = face_matrix(self.smoother(align_points(face)))
            if self._keep(first + i) >= 1.0:
                self.kept_silent += 1
                continue
            aligned = warp_face(frames[i], matrix)
            if aligned is not None:
                todo.append((i, matrix, aligned))
        return todo

    def process(self, frames: Frames, mels: np.ndarray, faces: Sequence[Face | None]) -> list[Patch | None]:
        """One Patch per frame with a face inside the frame (its alpha faded by the frame's
        silence weight), None for the others and for frames in silence."""
        check_batch(frames, mels, faces)
        first, self.next_frame = self.next_frame, self.next_frame + len(frames)
        patches: list[Patch | None] = [None] * len(frames)
        todo = self._aligned(frames, faces, first)
        if not todo:
            return patches
        tokens = tokens_at(self.features, [first + i for i, _, _ in todo], fps=self.fps)  # (n, 50, 384)
        with torch.inference_mode():  # the run loop holds gpu_lock() around process()
            out = lipsync_faces(self.gen.models.unet, self.gen.models.vae, to_pixels([a for _, _, a in todo]),
                                tokens, options=self.gen.options)  # (n, 3, 256, 256)
        height, width = frames[todo[0][0]].shape[:2]
        for (i, matrix, _), face_rgb in zip(todo, to_uint8(out)):
            patch = face_patch(face_rgb, matrix, width, height)
            keep = self._keep(first + i)
            patches[i] = patch if patch is None or keep <= 0 else replace(patch, alpha=patch.alpha * (1.0 - keep))
        return patches

    def facts(self) -> dict[str, Any]:
        return {**self.gen.settings(), "frames_kept_silent": self.kept_silent}


class LatentSyncGenerator(Generator):
    """LatentSync 1.5 with the weights :func:`pipeline.weights.resolve_latentsync` finds."""

    name = "latentsync"
    needs_faces = True
    needs_track_landmarks = True  # the alignment uses the brows and the nose
    needs_mels = False  # whisper tokens from the speech file instead
    needs_audio = True
    default_batch_size = FRAMES_PER_CALL  # one UNet chunk per batch

    def __init__(self, *, device: str = "auto", weights_dir: str | os.PathLike[str] | None = None,
                 options: SamplingOptions | None = None, silence_keep: bool = True,
                 allow_download: bool = True) -> None:
        self.device = choose_device(device)
        if self.device.type == "cpu":
            configure_cpu_threads()
        self.dtype = choose_dtype(self.device)
        self.weights = resolve_latentsync(weights_dir, allow_download=allow_download)
        self.options = options or sampling_options()
        self.silence_keep = silence_keep
        self.models, self.models_key = get_models(self.weights, device=self.device, dtype=self.dtype)

    def checkpoint_info(self) -> dict[str, Any]:
        """Which files produced the video: the UNet's {"path", "sha256", "source"} and, under
        "files", those of each file (the UNet, whisper, the VAE's weights with its "config": the
        config.json used or the built-in one)."""
        unet = self.weights["latentsync_unet"]
        files = {name: {"path": w.path, "sha256": w.sha256, "source": w.source} for name, w in self.weights.items()}
        files["latentsync_vae"]["config"] = self.models.vae.config_source
        return {"path": unet.path, "sha256": unet.sha256, "source": unet.source, "files": files}

    def settings(self) -> dict[str, Any]:
        """The sampling settings jobs of this generator use, defaults resolved."""
        return {"steps": self.options.steps, "guidance": self.options.guidance, "seed": self.options.seed,
                "silence_keep": self.silence_keep, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    def estimate(self, frames: int) -> CostEstimate | None:
        """On the CPU: frames x steps x the seconds per frame and step measured once per process
        on the loaded UNet (:mod:`.cost`); None on a GPU."""
        if self.device.type != "cpu":
            return None
        per = seconds_per_frame_step(self.models.unet, key=self.models_key, guided=self.options.guidance > 1.0)
        seconds = frames * self.options.steps * per
        return CostEstimate(seconds, f"{frames} frames x {self.options.steps} steps x {per:.3f} s per frame and "
                                     "step, measured on this CPU")

    def new_job(self, *, fps: float, width: int, height: int,  # type: ignore[override]
                audio: str | os.PathLike[str] | None = None) -> LatentSyncJob:
        if audio is None:
            raise ValueError("the latentsync generator needs the speech file: new_job(..., audio=PATH)")
        return LatentSyncJob(self, fps=fps, audio=audio)


def make_latentsync_generator(*, device: str = "auto", weights_dir: str | os.PathLike[str] | None = None,
                              steps: int | None = None, guidance: float | None = None, seed: int | None = None,
                              silence_keep: bool = True, allow_download: bool = True) -> LatentSyncGenerator:
    """The entry point ``get_generator("latentsync", ...)`` calls. Raises WeightsUnavailable
    (a file not found anywhere), WeightsInvalid (a file that does not fit) and ValueError (a
    setting out of range)."""
    return LatentSyncGenerator(device=device, weights_dir=weights_dir, allow_download=allow_download,
                               options=sampling_options(steps=steps, guidance=guidance, seed=seed),
                               silence_keep=silence_keep)
