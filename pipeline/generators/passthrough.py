"""``passthrough``: draws nothing; the original frames with the new audio, the "no lip-sync"
reference for scoring."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.faces.types import Face
from pipeline.generators.base import Frames, Generator, GeneratorJob, check_batch
from pipeline.generators.blend import Patch



class PassthroughJob(GeneratorJob):
    def process(self, frames: Frames, mels: np.ndarray,
                faces: Sequence[Face | None]) -> list[Patch | None]:
        check_batch(frames, mels, faces)
        return [None] * len(frames)


class PassthroughGenerator(Generator):
    """The original frames, untouched: the reference without lip-sync."""

    name = "passthrough"
    needs_faces = False
    needs_mels = False
    default_batch_size = 16

    def new_job(self, *, fps: float, width: int, height: int) -> PassthroughJob:
        return PassthroughJob()
