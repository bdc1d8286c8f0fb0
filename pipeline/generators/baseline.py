"""``baseline``, weights-free: opens the tracked mouth in proportion to the speech energy of
each frame's mel window, closed in silence (noise gate), with attack/release smoothing across
batches, rendered by :func:`pipeline.generators.mouth.render_mouth` as a small feathered patch."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pipeline.errors import WeightsUnavailable
from pipeline.faces.types import Face, FaceTracker, lerp_faces
from pipeline.generators.base import Frames, Generator, GeneratorJob, check_batch
from pipeline.generators.blend import Patch
from pipeline.generators.mouth import MouthGeometry, draw_mouth, mouth_geometry
from pipeline.media.audio import MAX_ABS_VALUE, MEL_FPS, MEL_STEP, MIN_LEVEL_DB

log = logging.getLogger(__name__)

MEL_DB_PER_UNIT = -MIN_LEVEL_DB / (2 * MAX_ABS_VALUE)  # 12.5: Wav2Lip's mel [-4, 4] spans -100 .. 0 dB
MEL_FLOOR = -MAX_ABS_VALUE  # -4.0: the value of silence

# The baseline's audio-to-opening curve (levels in dB relative to Wav2Lip's mel reference;
# measured speech peaks lie at -49 .. -38 dB, medians at -61 .. -50, digital silence -100).
PEAK_INIT_DB = -45.0  # assumed speech peak before any speech was heard
PEAK_MIN_DB = -70.0  # the peak tracker never sinks below this: noise alone is not speech
PEAK_DECAY_DB_S = 4.0  # dB per second the peak estimate sinks without louder speech
DYNAMIC_DB = 30.0  # levels from peak - 30 dB (closed) to the peak (fully open)
FLOOR_WINDOW_S = 2.0  # the noise floor is the quietest frame of the last 2 s (speech always dips)
FLOOR_INIT_DB = -70.0  # the assumed noise floor until a whole window has been heard
GATE_ABOVE_FLOOR_DB = 8.0  # the gate stays this far above the noise floor
ABS_GATE_DB = -80.0  # nothing below this opens the mouth
ATTACK_S = 0.03  # time constant of the opening mouth
RELEASE_S = 0.07  # time constant of the closing mouth
SNAP_CLOSED = 0.04  # a smoothed opening below this, with a closed target, becomes 0
REFIT_AGREE = 0.02  # neighbouring landmark fits closer than this (mean, fraction of face width) are averaged




def mel_level_db(mels: np.ndarray, fps: float) -> np.ndarray:
    """Loudness of the audio under each frame, from its mel window: float32 (B,) in dB.

    The window of frame i starts at the frame's time; its first 80/fps columns (3 at 25
    fps) are the audio during the frame. Power-averaged over those columns and all bins.
    """
    k = min(MEL_STEP, max(1, round(MEL_FPS / fps)))
    db = (np.asarray(mels, np.float32)[:, :, :k] - MEL_FLOOR) * MEL_DB_PER_UNIT - 100.0  # (B, 80, k)
    power = np.mean(np.power(10.0, db / 10.0, dtype=np.float64), axis=(1, 2))  # (B,)
    return (10.0 * np.log10(np.maximum(power, 1e-10))).astype(np.float32)


class MouthDriver:
    """Speech level -> mouth opening in [0, 1], causal, with state carried across batches.

    An adaptive peak (fast up, slow decay) places a 30 dB window under the loudest recent
    speech; the noise floor is the quietest frame of a sliding window; the gate keeps the
    mouth shut below the peak's window and near the noise floor (steady background noise
    does not move it); a one-pole attack/release filter smooths the result.
    """

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.peak = PEAK_INIT_DB
        window = max(1, round(FLOOR_WINDOW_S * fps))
        self.recent: deque[float] = deque([FLOOR_INIT_DB] * window, maxlen=window)
        self.value = 0.0
        self.closed = True  # whether the gate shut the last frame (its target opening was 0)
        self.attack = 1.0 - math.exp(-1.0 / (fps * ATTACK_S))
        self.release = 1.0 - math.exp(-1.0 / (fps * RELEASE_S))

    def step(self, level_db: float) -> float:
        self.peak = max(level_db, self.peak - PEAK_DECAY_DB_S / self.fps, PEAK_MIN_DB)
        self.recent.append(level_db)
        gate = max(ABS_GATE_DB, self.peak - DYNAMIC_DB, min(self.recent) + GATE_ABOVE_FLOOR_DB)
        target = 0.0 if level_db <= gate else min(1.0, (level_db - gate) / max(self.peak - gate, 1.0))
        self.closed = target == 0.0
        coef = self.attack if target > self.value else self.release
        self.value += coef * (target - self.value)
        if target == 0.0 and self.value < SNAP_CLOSED:
            self.value = 0.0
        return self.value

    def run(self, levels_db: np.ndarray) -> np.ndarray:
        return np.array([self.step(float(v)) for v in levels_db], np.float32)

    def gate(self, levels_db: np.ndarray) -> np.ndarray:
        """bool (B,): where the gate hears silence (shuts the mouth), frame by frame."""
        shut = []
        for v in levels_db:
            self.step(float(v))
            shut.append(self.closed)
        return np.array(shut, bool)


FIT_EVERY = 2  # landmarks are fitted on every 2nd frame (~1.4 ms per dlib fit in a job), interpolated between
FIT_INTERPOLATION = cv2.INTER_LINEAR  # scales each fit's crop: 0.72x area averaging's CPU at 720p


class BaselineJob(GeneratorJob):
    def __init__(self, gen: BaselineGenerator, fps: float) -> None:
        self.gen = gen
        self.fps = fps
        self.driver = MouthDriver(fps)
        self.openings: list[float] = []  # every frame's opening so far (for tests and reports)
        self.done = 0  # frames processed so far

    def process(self, frames: Frames, mels: np.ndarray,
                faces: Sequence[Face | None]) -> list[Patch | None]:
        check_batch(frames, mels, faces)
        opening = self.driver.run(mel_level_db(mels, self.fps))  # (B,)
        self.openings.extend(float(v) for v in opening)
        patches: list[Patch | None] = [None] * len(faces)
        todo: list[int] = []
        items: list[tuple[np.ndarray, MouthGeometry]] = []  # the forward's input: the box's pixels and the geometry
        for i, (frame, face, amount) in enumerate(zip(frames, self._fitted(frames, faces), opening)):
            g = None if face is None or face.mouth is None else mouth_geometry(frame.shape, face.mouth, float(amount))
            if g is not None:
                x1, y1, x2, y2 = g.box
                todo.append(i)
                items.append((frame[y1:y2, x1:x2], g))
        if items:
            for i, patch in zip(todo, self.forward_fn(self.gen, items)):
                patches[i] = patch
        self.done += len(faces)
        return patches

    def _fitted(self, frames: Frames, faces: Sequence[Face | None]) -> list[Face | None]:
        """The faces with landmarks fitted on their full-resolution frames: on every
        FIT_EVERY-th frame of the job (and the batch's last); in between, interpolated from
        the nearest fits on both sides, unless those disagree (fast motion, a cut): then
        fitted as well."""
        fit = self.gen.landmarker
        if fit is None:
            return list(faces)
        n = len(faces)
        out: list[Face | None] = [None] * n
        for i, face in enumerate(faces):
            if face is not None and ((self.done + i) % FIT_EVERY == 0 or i == n - 1):
                out[i] = fit.landmarks_in(frames[i], face, interpolation=FIT_INTERPOLATION)
        fitted = [i for i in range(n) if out[i] is not None]
        for i, face in enumerate(faces):
            if face is None or out[i] is not None:
                continue
            j = max((k for k in fitted if k < i), default=None)
            k = min((k for k in fitted if k > i), default=None)
            a, b = (out[j] if j is not None else None), (out[k] if k is not None else None)
            if a is not None and b is not None and k - j <= FIT_EVERY and _agree(a, b, face):
                out[i] = lerp_faces(a, b, (i - j) / (k - j))
            else:
                out[i] = fit.landmarks_in(frames[i], face, interpolation=FIT_INTERPOLATION)
        return out


def _agree(a: Face, b: Face, face: Face) -> bool:
    """Whether two fits of neighbouring frames are close enough to average."""
    if a.landmarks is None or b.landmarks is None:
        return False
    return float(np.abs(a.landmarks - b.landmarks).mean()) < REFIT_AGREE * face.width


class BaselineGenerator(Generator):
    """Weights-free mouth animation from speech energy and the tracked mouth landmarks.

    ``landmarker`` re-fits each frame's landmarks on the full-resolution frame (tracking
    runs at reduced size, fits landmarks only where it detects, and interpolates between):
    a FaceTracker, or a make_tracker kind ("auto", the default, is the same process-wide
    tracker a job with default options tracks with), or None to use the tracked landmarks.
    """

    name = "baseline"
    needs_faces = True

    def __init__(self, *, landmarker: FaceTracker | str | None = "auto") -> None:
        if isinstance(landmarker, str):
            landmarker = _optional_tracker(landmarker)
        self.landmarker = landmarker

    @property
    def needs_track_landmarks(self) -> bool:  # type: ignore[override]
        return self.landmarker is None  # its landmarker re-fits them on full-resolution frames

    def forward(self, items: Sequence[Any]) -> list[Patch]:
        """(the frame's BGR pixels in the patch box, MouthGeometry) per mouth -> its Patch."""
        return [draw_mouth(region, g) for region, g in items]

    def spec(self) -> dict[str, Any]:
        return {"landmarker": None}  # drawing needs no landmarker: the geometry comes with each item

    def new_job(self, *, fps: float, width: int, height: int) -> BaselineJob:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        return BaselineJob(self, fps)


def _optional_tracker(kind: str) -> FaceTracker | None:
    from pipeline.faces.backends import make_tracker

    try:
        return make_tracker(kind)
    except WeightsUnavailable as exc:
        log.warning("baseline: no %s landmarker (%s); using the tracked landmarks", kind, exc)
        return None
