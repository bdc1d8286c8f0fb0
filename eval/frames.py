"""Lining up the original and the generated video, and the decoded frames scoring reads.

:func:`align` decides how generated frame i is compared with original frame i, or rejects
the pair with a message that says why:

- frame rates: equal within 0.1 %, else the generated video is resampled to the
  original's rate while decoding;
- sizes: equal; or the generated one is the original cropped to even sides (what the
  H.264 writer does to odd sizes), compared on the common top-left area; or the same
  aspect ratio within 1 %, decoded scaled to the original's size; anything else is rejected;
- frame counts: compared over the common prefix (a job's output is cut to its audio, or
  extended ping-pong past the source's end, which starts with the source's frames).

Frames are decoded in the decoder's own I420 format (``pipeline.media.yuv.YuvFrame``): the
generated video once, every frame, for the landmarks and SyncNet crops (only the face
region is converted to BGR); the original only at the sampled frames (ffmpeg's ``select``).
Both convert a compared frame to BGR the same way (OpenCV, BT.601 limited range, as
ffmpeg's own conversion), so a video scored against itself compares identical pixels.
I420 frames have even sides: an odd-sized video is compared on its top-left even area.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.errors import InvalidMedia
from pipeline.faces.tracking import Track
from pipeline.faces.types import LANDMARK_FACE_PX, LANDMARK_MARGIN, Face, FaceTracker
from pipeline.media.ffmpeg import base_cmd
from pipeline.media.noref import Skip, frame_number
from pipeline.media.probe import MediaInfo
from pipeline.media.decode import (SELECT_MAX_TERMS, decoder_input, frame_plan, pipe_frames, read_frames,
                                   select_expr)
from pipeline.media.yuv import YuvFrame, even_box

FPS_TOLERANCE = 1e-3  # relative: 25 vs 25.02 is the same rate
ASPECT_TOLERANCE = 0.01  # relative aspect-ratio difference accepted for scaling
_EPS = 1e-9  # guards floor() against products a hair below an integer


@dataclass(frozen=True)
class Alignment:
    fps: float  # the rate both are compared at (the original's)
    size: tuple[int, int]  # (w, h) compared
    generated_fps: float | None  # resample the generated video to ``fps`` when not None
    generated_size: tuple[int, int] | None  # decode the generated video at this (w, h) when not None
    note: str  # how the pair was aligned, for the record


def _name(info: MediaInfo) -> str:
    return os.path.basename(info.path)


def align(original: MediaInfo, generated: MediaInfo) -> Alignment:
    """How to compare the two videos frame by frame; raises InvalidMedia when they cannot be."""
    for info in (original, generated):
        if info.video is None:
            raise InvalidMedia(f"{_name(info)}: has no video stream, nothing to score")
    ow, oh = original.video.display_size
    gw, gh = generated.video.display_size
    ofps = 25.0 if original.is_image else original.video.fps
    gfps = ofps if generated.is_image else generated.video.fps
    notes = []
    resample = None
    if abs(gfps - ofps) > FPS_TOLERANCE * ofps:
        resample = ofps
        notes.append(f"generated resampled from {gfps:.3f} to {ofps:.3f} fps")
    size, scaled = (ow - ow % 2, oh - oh % 2), None  # I420 frames have even sides
    if gw in (ow, size[0]) and gh in (oh, size[1]):
        if size != (ow, oh):
            notes.append(f"original {ow}x{oh} compared on its top-left {size[0]}x{size[1]} (even-size crop)")
    elif abs((gw / gh) / (ow / oh) - 1) <= ASPECT_TOLERANCE:
        scaled = size
        notes.append(f"generated scaled from {gw}x{gh} to {size[0]}x{size[1]}")
    else:
        raise InvalidMedia(f"cannot compare {_name(original)} ({ow}x{oh}) with {_name(generated)} "
                           f"({gw}x{gh}): different aspect ratios; score a video against its own "
                           f"lip-synced output")
    return Alignment(fps=ofps, size=size, generated_fps=resample, generated_size=scaled,
                     note="; ".join(notes) or "same size and frame rate")


def generated_frames(info: MediaInfo, al: Alignment) -> Iterator[YuvFrame]:
    """Every frame of the generated video as ``al`` aligns it, as I420 (even sides)."""
    frames = read_frames(info.path, size=al.generated_size, fps=al.generated_fps, info=info,
                         pix_fmt="yuv420p")
    try:
        for data in frames:
            yield YuvFrame(data)
    finally:
        frames.close()


def original_samples(info: MediaInfo, indices: Sequence[int]) -> Iterator[tuple[int, YuvFrame]]:
    """(index, I420 frame) of the original at the given indices only, ascending; indices past
    the end are not yielded. Closing the generator stops ffmpeg's decoding there."""
    wanted = sorted({int(i) for i in indices})
    frames = read_frames(info.path, info=info, pix_fmt="yuv420p", select=wanted)
    try:
        for i, data in zip(wanted, frames):
            yield i, YuvFrame(data)
    finally:
        frames.close()


def region_decodable(info: MediaInfo, al: Alignment, samples: Sequence[int]) -> bool:
    """Whether :func:`region_frames` decodes ``info`` exactly as :func:`generated_frames` would:
    frames one for one (no resampling, scaling, rotation or odd-side crop)."""
    v = info.video
    return (not info.is_image and v is not None and al.generated_fps is None and al.generated_size is None
            and not v.vfr and v.rotation == 0 and v.width % 2 == 0 and v.height % 2 == 0
            and len(set(samples)) <= SELECT_MAX_TERMS)


def even_region(x1: float, y1: float, x2: float, y2: float, width: int, height: int
                ) -> tuple[int, int, int, int]:
    """(x, y, w, h): the smallest even-cornered region inside width x height holding the box."""
    x, y, r, b = even_box(int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)), int(np.ceil(y2)),
                          width, height)
    return x, y, max(2, r - x), max(2, b - y)


def region_frames(info: MediaInfo, region: tuple[int, int, int, int], rate: float,
                  samples: Sequence[int], full: str | os.PathLike[str],
                  count: str | os.PathLike[str], *, size: tuple[int, int] | None = None,
                  on_start: Callable[[], None] | None = None, skip: Skip | None = None) -> Iterator[LumaFrame]:
    """The luma of ``region`` (x, y, w, h; even) of a :func:`region_decodable` video at the
    frames where floor(n * rate) steps up (n = 0 included: :func:`rate_frame`), as
    :class:`LumaFrame`s, scaled to ``size`` (w, h; ffmpeg's area averaging) if given. From
    the same decode, the frames at ``samples`` go whole (raw I420, ascending) to the file
    ``full`` (read them with :class:`SampleFile` as they complete), and 6 bytes per decoded
    frame to the file ``count`` (:func:`counted_frames`). ``on_start``: as
    ``pipeline.media.decode.pipe_frames``'s. ``skip``: packets dropped before the decoder (none
    of these frames), frames then numbered by ``skip.index``; ``count`` counts the rest."""
    x, y, w, h = region
    n = frame_number(skip)
    select = select_expr(sorted({int(i) for i in samples}), n)
    steps = f"eq({n}\\,0)+gt(floor({n}*{rate!r}+{_EPS!r})\\,floor(({n}-1)*{rate!r}+{_EPS!r}))"
    scale = "" if size is None or size == (w, h) else f",scale={size[0]}:{size[1]}:flags=area"
    graph = (f"[0:v:0]split=3[a][b][c];[a]select='{steps}',crop={w}:{h}:{x}:{y},extractplanes=y{scale}[luma];"
             f"[b]select='{select}'[full];[c]crop=2:2:0:0[count]")
    out = ["-fps_mode", "passthrough", "-f", "rawvideo"]
    cmd = [*base_cmd(), "-loglevel", "error", *decoder_input(info.path, skip=skip),
           "-an", "-sn", "-dn", "-filter_complex", graph,
           "-map", "[luma]", *out, "-pix_fmt", "gray", "pipe:1",
           "-map", "[full]", *out, "-pix_fmt", "yuv420p", "file:" + os.fspath(full),
           "-map", "[count]", *out, "-pix_fmt", "yuv420p", "file:" + os.fspath(count)]
    frames = pipe_frames(cmd, *(size or (w, h)), info.path, pix_fmt="gray", on_start=on_start)
    try:
        for data in frames:
            yield LumaFrame(data)
    finally:
        frames.close()


def rate_frame(i: int, rate: float) -> bool:
    """Whether frame i is one of :func:`region_frames`' (floor(i * rate) steps up at i, or i = 0);
    ffmpeg's select evaluates the same double arithmetic."""
    return i == 0 or math.floor(i * rate + _EPS) > math.floor((i - 1) * rate + _EPS)


def counted_frames(count: str | os.PathLike[str]) -> int:
    """The frames :func:`region_frames` decoded, from its ``count`` file (once it has exited)."""
    return os.path.getsize(count) // 6  # a 2x2 I420 frame: 4 luma bytes + 1 + 1 chroma


class LumaFrame:
    """A grey (H, W) luma region, with the ``planes()`` and ``shape`` that
    ``FaceTracker.landmarks_in`` reads from a ``pipeline.media.yuv.YuvFrame``."""

    def __init__(self, y: np.ndarray) -> None:
        self.y = y  # (H, W) uint8, limited range as decoded
        self.shape = y.shape

    def planes(self) -> tuple[np.ndarray]:
        return (self.y,)


def landmark_region(faces: Sequence[Face | None], size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(x, y, w, h): every area ``landmarks_in`` may read (each tracked box grown by
    LANDMARK_MARGIN per side, and 2 px for its rounding), or None when no frame has a face."""
    boxes = [f.box for f in faces if f is not None]
    if not boxes:
        return None
    b = np.array(boxes, np.float64)  # (k, 4) x1, y1, x2, y2
    mx, my = LANDMARK_MARGIN * (b[:, 2] - b[:, 0]) + 2, LANDMARK_MARGIN * (b[:, 3] - b[:, 1]) + 2
    return even_region(float((b[:, 0] - mx).min()), float((b[:, 1] - my).min()),
                       float((b[:, 2] + mx).max()), float((b[:, 3] + my).max()), *size)


def fit_scale(faces: Sequence[Face | None], region: tuple[int, int, int, int]
              ) -> tuple[tuple[int, int], tuple[float, float]]:
    """The (w, h) the landmark region is decoded at, so the widest tracked face is at most
    LANDMARK_FACE_PX wide (as ``landmarks_in`` scales each crop), and the (x, y) scale."""
    widest = max(f.width for f in faces if f is not None)
    s = min(1.0, (LANDMARK_FACE_PX - 1) / max(widest, 1.0))
    w, h = region[2:]
    size = (max(8, round(w * s)), max(8, round(h * s)))
    return size, (size[0] / w, size[1] / h)


def fit_in_region(landmarker: FaceTracker, luma: LumaFrame, face: Face,
                  origin: tuple[int, int], scale: tuple[float, float]) -> Face:
    """``face`` with landmarks fitted on the scaled luma region at ``origin``, in frame pixels."""
    (x0, y0), (sx, sy) = origin, scale
    x1, y1, x2, y2 = face.box
    local = replace(face, box=((x1 - x0) * sx, (y1 - y0) * sy, (x2 - x0) * sx, (y2 - y0) * sy))
    fitted = landmarker.landmarks_in(luma, local)
    back, shift = np.array([1 / sx, 1 / sy], np.float32), np.array([x0, y0], np.float32)
    return replace(face, landmarks=None if fitted.landmarks is None else fitted.landmarks * back + shift,
                   mouth_points=None if fitted.mouth_points is None else fitted.mouth_points * back + shift)


class SampleFile:
    """The whole frames :func:`region_frames` writes to ``path``, read as they complete: the
    file only grows, so frame k is complete once it holds k + 1 frames' bytes."""

    def __init__(self, path: str | os.PathLike[str], samples: Sequence[int], size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.samples = sorted({int(i) for i in samples})
        self.width, self.height = size
        self.nbytes = self.width * self.height * 3 // 2
        self.done = 0  # samples yielded so far

    def ready(self) -> Iterator[tuple[int, YuvFrame]]:
        """(index, I420 frame) of the samples completed since the last call, ascending."""
        try:
            have = self.path.stat().st_size // self.nbytes
        except FileNotFoundError:
            return
        while self.done < min(have, len(self.samples)):
            data = np.fromfile(self.path, np.uint8, count=self.nbytes, offset=self.done * self.nbytes)
            frame = YuvFrame(data.reshape(self.height * 3 // 2, self.width))  # (H * 3 / 2, W) I420 planes
            yield self.samples[self.done], frame
            self.done += 1


class FaceLookup:
    """The original's face for generated frame i: that of source frame plan[i] (the job's plan,
    else ``frame_plan`` of the loop mode, grown as asked; past a given plan's end, its last)."""

    def __init__(self, track: Track | None, plan: Sequence[int] | None, loop: str) -> None:
        self.faces, self._given, self._loop = [] if track is None else list(track.faces), plan is not None, loop
        self._plan = np.zeros(0, np.int64) if plan is None else np.asarray(plan, np.int64)
        if self._given and self.faces and len(self._plan) and \
                not 0 <= int(self._plan.min()) <= int(self._plan.max()) < len(self.faces):
            raise ValueError(f"source_indices run outside the original's {len(self.faces)} tracked frames")

    def get(self, i: int) -> Face | None:
        if not self.faces:
            return None
        if i >= len(self._plan):
            if self._given:
                return self.faces[int(self._plan[-1])] if len(self._plan) else None
            self._plan = frame_plan(len(self.faces), max(2 * i + 2, len(self.faces)), self._loop)
        return self.faces[int(self._plan[i])]

    def boxes(self, n: int) -> np.ndarray:
        """(n, 4) boxes for generated frames 0..n-1; frames without a face take the nearest box."""
        rows = [self.get(i) for i in range(max(1, n))]
        have = np.array([f is not None for f in rows])
        out = np.zeros((len(rows), 4))
        idx = np.arange(len(rows))
        known = np.array([f.box for f in rows if f is not None], np.float64).reshape(-1, 4)  # (k, 4)
        for c in range(4):
            out[:, c] = np.interp(idx, idx[have], known[:, c])
        return out
