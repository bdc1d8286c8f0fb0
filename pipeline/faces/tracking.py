"""Tracking one face through a video (:func:`track_frames`; :func:`track_video` decodes it).

The detector runs on every ``every``-th frame of a reduced-resolution stream; detections
are smoothed, interpolated between, and mapped to full resolution. The face followed is
chosen at the first detection and kept by overlap after that.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import NoFaceFound
from pipeline.faces.backends import make_tracker
from pipeline.faces.types import Face, FaceTracker, area, iou, lerp_faces
from pipeline.media.decode import decode_rate, read_frames
from pipeline.media.probe import MediaInfo
from pipeline.options import RunOptions

log = logging.getLogger(__name__)

DETECT_EVERY = 5  # frames between detections: 85 detections for a 425-frame clip
SAME_FACE_IOU = 0.2  # a detection overlapping the last face at least this much is the same face
SMOOTH_WEIGHTS = (0.25, 0.5, 0.25)  # over consecutive detections: removes detector jitter


@dataclass(frozen=True)
class Track:
    """One face per source frame (None where it has none), in full-resolution pixels."""

    faces: list[Face | None]
    frames_without_face: int
    sampled: list[int]  # frames the detector ran on

    def __len__(self) -> int:
        return len(self.faces)

    def at(self, i: int) -> Face | None:
        """The face of source frame ``i``; past the end, the last frame's. (A decoder can
        yield a few frames fewer than the container's duration promises; the renderer
        repeats the last decoded frame there, so it gets that frame's face.)"""
        if not self.faces:
            return None
        return self.faces[min(int(i), len(self.faces) - 1)]


def _choose(faces: Sequence[Face], prev: Face | None, face_index: int) -> Face | None:
    """The tracked face: the one overlapping the last face most, else the face_index-th largest."""
    if prev is not None and faces:
        best = max(faces, key=lambda f: iou(f.box, prev.box))
        if iou(best.box, prev.box) >= SAME_FACE_IOU:
            return best
    ranked = sorted(faces, key=lambda f: area(f.box), reverse=True)
    return ranked[face_index] if face_index < len(ranked) else None


class _Observer:
    """Runs the tracker on single frames, following the chosen face between calls."""

    def __init__(self, tracker: FaceTracker, face_index: int, landmarks: bool) -> None:
        self.tracker, self.face_index, self.landmarks = tracker, face_index, landmarks
        self.prev: Face | None = None
        self.sampled: list[int] = []

    def __call__(self, i: int, frame: np.ndarray) -> Face | None:
        self.sampled.append(i)
        face = None
        if self.prev is not None:
            face = _choose(self.tracker.detect_near(frame, self.prev.box), self.prev, 0)
        if face is None:
            face = _choose(self.tracker.detect(frame, landmarks=False), self.prev, self.face_index)
        if face is not None and self.landmarks:
            face = self.tracker.landmarks(frame, face)
        self.prev = face
        return face


def _smooth(obs: list[tuple[int, Face]], every: int) -> list[tuple[int, Face]]:
    """Weighted average of each detection with its neighbours in the same run (gap <= every)."""
    out = []
    w0, w1, w2 = SMOOTH_WEIGHTS
    for j, (i, f) in enumerate(obs):
        near = [(w1, f)]
        if j > 0 and i - obs[j - 1][0] <= every:
            near.append((w0, obs[j - 1][1]))
        if j + 1 < len(obs) and obs[j + 1][0] - i <= every:
            near.append((w2, obs[j + 1][1]))
        if len(near) == 1 or any((g.landmarks is None) != (f.landmarks is None) for _, g in near):
            out.append((i, f))
            continue
        weights = [w for w, _ in near]
        box = tuple(float(v) for v in _average([g.box for _, g in near], weights))
        lm = _average([g.landmarks for _, g in near], weights)
        mp = _average([g.mouth_points for _, g in near], weights)
        out.append((i, Face(box, lm, f.score, mp)))  # type: ignore[arg-type]
    return out


def _average(values: list, weights: list[float]) -> np.ndarray | None:
    """Weighted mean of equally shaped arrays (float32), None if any is None."""
    if any(v is None for v in values):
        return None
    acc = sum(w * np.asarray(v, np.float64) for w, v in zip(weights, values))
    return (acc / sum(weights)).astype(np.float32)


class TrackBuilder:
    """:func:`track_frames` a frame at a time: :meth:`feed` each reduced-resolution frame in
    order; :meth:`ready` tells how many leading frames' faces are final (:meth:`faces`);
    :meth:`finish` returns the Track, the same as ``track_frames`` over the same frames.

    ``reduce`` turns what is fed into the frame the tracker sees; it is called only for the
    frames the detector runs on, so a caller may feed full-resolution frames and pay for
    reducing one in ``every``. A face is final once the detector has run ``2 * every`` frames
    beyond its detection window: smoothing reads one detection either side, interpolation the
    next detection (and the frames between, examined when a face appears or disappears).
    """

    def __init__(self, tracker: FaceTracker, *, scale: float, face_index: int = 0, every: int = DETECT_EVERY,
                 landmarks: bool = True, reduce: Callable[[Any], np.ndarray] | None = None) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.scale, self.face_index, self.every = scale, face_index, every
        self._observe = _Observer(tracker, face_index, landmarks)
        self._reduce = reduce or (lambda frame: frame)
        self._obs: dict[int, Face | None] = {}
        self._pending: list[tuple[int, Any]] = []  # frames since the last detection
        self._last_key, self.n = -1, 0
        self._last: Any = None
        self._finished = False

    def _look(self, i: int, frame: Any) -> Face | None:
        return self._observe(i, self._reduce(frame))

    def _settle(self, key: int, face: Face | None) -> None:
        prev = self._obs.get(self._last_key) if self._last_key >= 0 else None
        if self._last_key >= 0 and (prev is None) != (face is None):
            self._observe.prev = prev
            for j, frame in self._pending[1:-1]:  # the edge of a face's presence lies in here
                self._obs[j] = self._look(j, frame)
            self._observe.prev = face
        self._obs[key] = face

    def feed(self, frame: Any) -> None:
        """The next frame (index ``self.n`` before the call)."""
        i = self.n
        self.n, self._last = i + 1, frame
        self._pending.append((i, frame))
        if i % self.every == 0:
            self._settle(i, self._look(i, frame))
            self._last_key, self._pending = i, [(i, frame)]

    def ready(self) -> int:
        """How many leading frames have final faces (every frame once finished)."""
        return self.n if self._finished else max(0, self._last_key - self.every)

    def faces(self, lo: int, hi: int) -> list[Face | None]:
        """The final faces of frames [lo, hi) (hi <= :meth:`ready`), in full-resolution pixels:
        resolved from the detections within 3 * every of the range, which decide them."""
        margin = 3 * self.every
        window: dict[int, Face | None] = {}
        for k, f in reversed(self._obs.items()):  # frames enter _obs in ascending order: stop past the window
            if k < lo - margin:
                break
            if k < hi + margin:
                window[k] = f
        return _resolve(window, self.every, self.scale, hi, lo=lo)

    def finish(self) -> Track:
        """The Track of every frame fed. Raises NoFaceFound naming the sampled frames when
        no frame has a face."""
        if self.n == 0:
            raise NoFaceFound("no frames to track")
        if self.n - 1 != self._last_key and not self._finished:
            self._settle(self.n - 1, self._look(self.n - 1, self._last))
            self._last_key = self.n - 1
        self._finished, self._pending, self._last = True, [], None
        sampled = self._observe.sampled
        if not any(f is not None for f in self._obs.values()):
            shown = ", ".join(str(i) for i in sampled[:12])
            more = ", ..." if len(sampled) > 12 else ""
            which = "no face" if self.face_index == 0 else f"no face #{self.face_index + 1} " \
                                                           f"(face_index={self.face_index})"
            raise NoFaceFound(f"{which} found in any of the {len(sampled)} sampled frames "
                              f"({shown}{more}); the face must be frontal and clearly visible")
        faces = _resolve(self._obs, self.every, self.scale, self.n)
        missing = sum(f is None for f in faces)
        log.info("tracked %d frames: %d detections, %d frames without a face", self.n, len(sampled), missing)
        return Track(faces, missing, sorted(set(sampled)))


def _resolve(obs: dict[int, Face | None], every: int, scale: float, n: int, *, lo: int = 0) -> list[Face | None]:
    """Faces of frames [lo, n) from the detections ``obs`` (frame -> face or None): smoothed,
    interpolated between detections at most ``every`` apart with a face all along, scaled."""
    out: list[Face | None] = [None] * (n - lo)
    found = _smooth(sorted((i, f) for i, f in obs.items() if f is not None), every)
    if not found:
        return out
    for (i, a), (j, b) in zip(found, found[1:]):
        if lo <= i < n:
            out[i - lo] = a.scaled(scale)
        if j > lo and j - i <= every and all(obs.get(k, a) is not None for k in range(i + 1, j)):
            for k in range(max(i + 1, lo), min(j, n)):
                out[k - lo] = lerp_faces(a, b, (k - i) / (j - i)).scaled(scale)
    if lo <= found[-1][0] < n:
        out[found[-1][0] - lo] = found[-1][1].scaled(scale)
    return out


def track_frames(frames: Iterable[np.ndarray], *, scale: float, tracker: FaceTracker,
                 face_index: int = 0, every: int = DETECT_EVERY, landmarks: bool = True) -> Track:
    """Track one face through reduced-resolution ``frames`` (full = small * ``scale``);
    ``landmarks=False`` tracks boxes only (for a generator that fits its own, or none).

    The detector runs on every ``every``-th frame and on the last one; boxes and landmarks
    are smoothed over consecutive detections and interpolated linearly between them. Where
    a detection finds a face and the next one does not (or the reverse), every frame
    between them is examined, so a face is never invented across a gap longer than
    ``every`` frames. The face followed is the ``face_index``-th largest (0 = largest, by
    box area) at the first detection; later detections keep the face overlapping it most.
    Memory stays bounded: only the frames since the last detection are kept.

    Raises NoFaceFound naming the sampled frames when no frame has a face.
    """
    builder = TrackBuilder(tracker, scale=scale, face_index=face_index, every=every, landmarks=landmarks)
    for frame in frames:
        builder.feed(frame)
    return builder.finish()


def tracking_size(width: int, height: int, long_side: int) -> tuple[tuple[int, int], float]:
    """(the (w, h) frames are tracked at, at most ``long_side`` on the long side; the scale
    from those frames back to ``width`` x ``height``)."""
    scale = max(1.0, max(width, height) / long_side)
    small = (max(2, round(width / scale)), max(2, round(height / scale)))
    return small, (width / small[0] + height / small[1]) / 2


def track_video(video: str | os.PathLike[str], info: MediaInfo, *, options: RunOptions,
                fps: float, n_track: int, landmarks: bool = True) -> Track:
    """Faces of the first ``n_track`` source frames (decoded at ``fps``, as the render pass
    decodes them), detected on frames reduced to ``options.track_long_side``; boxes and
    (if ``landmarks``) landmarks in full-resolution pixels."""
    small, scale = tracking_size(*info.video.display_size, options.track_long_side)
    tracker = make_tracker(options.tracker)

    def frames() -> Iterator[np.ndarray]:
        source = read_frames(video, size=small, fps=decode_rate(info, fps), info=info)
        try:
            for i, frame in enumerate(source):
                if i >= n_track:
                    break
                yield frame
        finally:
            source.close()

    return track_frames(frames(), scale=scale, tracker=tracker, face_index=options.face_index,
                        landmarks=landmarks)
