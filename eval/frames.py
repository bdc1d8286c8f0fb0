"""Lining up the original and the generated video, and decoding only sampled frames.

:func:`align` decides how generated frame i is compared with original frame i, or rejects
the pair with a message that says why:

- frame rates: equal within 0.1 %, else the generated video is resampled to the
  original's rate while decoding;
- sizes: equal; or the generated one is the original cropped to even sides (what the
  H.264 writer does to odd sizes), compared on the common top-left area; or the same
  aspect ratio within 1 %, decoded scaled to the original's size; anything else is rejected;
- frame counts: compared over the common prefix (a job's output is cut to its audio, or
  extended ping-pong past the source's end, which starts with the source's frames).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InvalidMedia
from pipeline.ffmpeg import base_cmd, input_args
from pipeline.probe import MediaInfo
from pipeline.video_io import _pipe_frames, rate_str

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
    size, scaled = (ow, oh), None
    if (gw, gh) == (ow, oh):
        pass
    elif gw in (ow, ow - ow % 2) and gh in (oh, oh - oh % 2):
        size = (gw, gh)
        notes.append(f"original {ow}x{oh} compared on its top-left {gw}x{gh} (even-size crop)")
    elif abs((gw / gh) / (ow / oh) - 1) <= ASPECT_TOLERANCE:
        scaled = (ow, oh)
        notes.append(f"generated scaled from {gw}x{gh} to {ow}x{oh}")
    else:
        raise InvalidMedia(f"cannot compare {_name(original)} ({ow}x{oh}) with {_name(generated)} "
                           f"({gw}x{gh}): different aspect ratios; score a video against its own "
                           f"lip-synced output")
    return Alignment(fps=ofps, size=size, generated_fps=resample, generated_size=scaled,
                     note="; ".join(notes) or "same size and frame rate")


def read_selected(info: MediaInfo, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) for the given frame indices only (ascending), in display size.

    ffmpeg decodes every frame but converts and pipes only the selected ones (its
    ``select`` filter), which halves the cost of reading a few frames of a long video.
    Indices past the end are simply not yielded.
    """
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return
    w, h = info.video.display_size
    filters = []
    if not info.is_image and info.video.vfr:
        filters.append(f"fps=fps={rate_str(info.video.fps)}")
    filters.append("select='" + "+".join(f"eq(n\\,{i})" for i in wanted) + "'")
    filters.append(f"scale={w}:{h}")
    cmd = [*base_cmd(), "-loglevel", "error", *input_args(info.path), "-map", "0:v:0", "-an", "-sn", "-dn",
           "-vf", ",".join(filters), "-fps_mode", "passthrough", "-pix_fmt", "bgr24", "-f", "rawvideo", "pipe:1"]
    frames = _pipe_frames(cmd, w, h, info.path)
    try:
        yield from zip(wanted, frames)
    finally:
        frames.close()
