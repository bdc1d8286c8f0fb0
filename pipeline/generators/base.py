"""The generator interface: what draws the new mouth, behind one interface.

A :class:`Generator` is loaded once and shared; :meth:`Generator.new_job` gives the
per-job state (:class:`GeneratorJob`), whose :meth:`GeneratorJob.process` is called on
consecutive batches of one job's frames, in order, and returns one
:class:`~pipeline.generators.blend.Patch` (or None: leave the frame as it is) per frame.
The generators themselves live beside this module (``passthrough``, ``baseline``,
``wav2lip/``); :mod:`pipeline.generators.registry` names and builds them.

A generator whose model step is a pure function of per-frame inputs (``baseline``'s mouth
render, ``wav2lip``'s network) exposes it as :meth:`Generator.forward`, and its jobs call it
through their ``forward_fn`` (:data:`ForwardFn`). By default that runs it here
(:func:`local_forward`); an executor may inject another, e.g. one that sends the items to a
shared batched model server where the frames of several jobs go through one model copy
(``jobs/ray_serve.py``). The items and outputs must then survive a pickle.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.faces.types import Face
from pipeline.generators.blend import Patch
from pipeline.media.audio import MEL_BINS, MEL_STEP

log = logging.getLogger(__name__)

Frames = Sequence[Any] | np.ndarray  # B frames: (B, H, W, 3) uint8, or B frames that slice like (H, W, 3)

DEFAULT_BATCH = 32  # frames per call when a generator names no size of its own


def local_forward(generator: Generator, items: Sequence[Any]) -> list[Any]:
    """``generator.forward(items)`` in this process: the default :data:`ForwardFn`."""
    return generator.forward(items)


# (generator, per-frame items) -> one output per item, in order, computed wherever the
# generator's model lives; it may raise what the model raises
ForwardFn = Callable[["Generator", Sequence[Any]], list[Any]]


class GeneratorJob(ABC):
    """Per-job state of a generator; ``process`` is called on consecutive batches. Model
    steps go through ``forward_fn`` (set by the run loop when an executor gives one)."""

    forward_fn: ForwardFn = staticmethod(local_forward)

    @abstractmethod
    def process(self, frames: Frames, mels: np.ndarray,
                faces: Sequence[Face | None]) -> list[Patch | None]:
        """B frames, mels (B, 80, 16) float32, one face (or None) per frame -> one Patch
        (or None: frame untouched) per frame. A frame is a (H, W, 3) BGR uint8 array or
        anything that slices like one (the run loop passes pipeline.media.yuv.YuvFrame, whose
        ``frame[y1:y2, x1:x2]`` converts just that region): read only the regions you need."""

    def facts(self) -> dict[str, Any]:
        """What the job's record keeps of this generator's run: the settings it used (defaults
        resolved) and what it counted; JSON-able. Empty unless a generator says more."""
        return {}


@dataclass(frozen=True)
class CostEstimate:
    """A generator's estimate of a job's seconds, and what it rests on (for the refusal message)."""

    seconds: float
    basis: str


class Generator(ABC):
    """A loaded generator, shared by jobs (and threads)."""

    name: str
    needs_faces: bool
    needs_track_landmarks: bool = True  # False: the track's boxes are enough (tracking skips its fits)
    needs_mels: bool = True  # False: ``process`` ignores its mels (given zeros, never computed)
    needs_audio: bool = False  # True: ``new_job`` also receives ``audio=`` the speech file's path
    default_batch_size: int = DEFAULT_BATCH

    def forward(self, items: Sequence[Any]) -> list[Any]:
        """The model step on per-frame items (as this generator's jobs make them) -> one
        output per item, in order. Pure (no per-job state): items of several jobs may be
        run together. Generators without one never call it."""
        raise NotImplementedError(f"the {self.name} generator has no batched forward")

    def spec(self) -> dict[str, Any]:
        """Keyword arguments that rebuild an equivalent generator for :meth:`forward` in
        another process: ``registry.get_generator(self.name, **spec)``."""
        return {}

    @abstractmethod
    def new_job(self, *, fps: float, width: int, height: int) -> GeneratorJob:
        """Fresh per-job state for a video of this frame rate and size (and, for a generator
        with ``needs_audio``, ``audio=``: the path of the job's speech file)."""

    def estimate(self, frames: int) -> CostEstimate | None:
        """The seconds ``frames`` frames will take, where that is worth checking against a job's
        time limit before it starts (LatentSync on the CPU); None: not estimated."""
        return None


def check_batch(frames: Frames, mels: np.ndarray, faces: Sequence[Face | None]) -> None:
    if not len(frames) == len(mels) == len(faces):
        raise ValueError(f"frames, mels and faces differ in length: {len(frames)}, {len(mels)}, {len(faces)}")
    if len(mels) and np.shape(mels)[1:] != (MEL_BINS, MEL_STEP):
        raise ValueError(f"mels must be (B, {MEL_BINS}, {MEL_STEP}), got {np.shape(mels)}")
