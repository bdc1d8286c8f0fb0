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

Frames are decoded in the decoder's own I420 format (``pipeline.yuv.YuvFrame``): the
generated video once, every frame, for the landmarks and SyncNet crops (only the face
region is converted to BGR); the original only at the sampled frames (ffmpeg's ``select``).
Both convert a compared frame to BGR the same way (OpenCV, BT.601 limited range, as
ffmpeg's own conversion), so a video scored against itself compares identical pixels.
I420 frames have even sides: an odd-sized video is compared on its top-left even area.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InvalidMedia
from pipeline.probe import MediaInfo
from pipeline.video_io import read_frames
from pipeline.yuv import YuvFrame

FPS_TOLERANCE = 1e-3  # relative: 25 vs 25.02 is the same rate
ASPECT_TOLERANCE = 0.01  # relative aspect-ratio difference accepted for scaling


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


def original_samples(info: MediaInfo, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) of the original at the given indices only, ascending; indices past
    the end are not yielded. Closing the generator stops ffmpeg's decoding there."""
    wanted = sorted({int(i) for i in indices})
    frames = read_frames(info.path, info=info, pix_fmt="yuv420p", select=wanted)
    try:
        for i, data in zip(wanted, frames):
            yield i, YuvFrame(data).to_bgr()
    finally:
        frames.close()
