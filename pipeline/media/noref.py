"""Which packets of an H.264 video a decode can leave out: pictures nothing predicts from.

A picture whose slices have nal_ref_idc 0 is never a reference, so dropping its packet before
the decoder changes no other frame (ffmpeg's ``-skip_frame noref`` does the same for all of
them). Scoring reads some frames only (the landmark frames and the quality samples), so a
decode can drop the non-reference pictures it does not read: in the H.264 files libx264 writes
with B-frames, 111 of the 426 frames of monalisa's baseline output at 12.5 landmark frames a
second (scoring's CPU fell by about a tenth), and most of an original's frames where only its
35 quality samples are read (0.27 against 0.38 s for monalisa).

:func:`scan` reads the packets once (PyAV, demux only: no decoding; ~15 ms for 426 packets)
and :meth:`Refs.skip` names the ones to drop, as an ffmpeg input bitstream filter
(``-bsf:v:0 noise=drop=...``). The filter knows a packet by its pts less the first packet's:
ffmpeg has already moved the timestamps by the file's start time when the filter sees them (a
file that starts at 10 s), and the packet order is not relied on. Past a drop, ffmpeg's ``n``
no longer counts the stream's frames, so filters select frames by :attr:`Skip.index` (the
frame's index from its time on the stream's frame grid) instead.

It applies only where that index is exact and nothing else can hide a frame: H.264 in MP4-style
length-prefixed NAL units, every packet timed, distinct, on one constant grid of pts steps, none
marked to be discarded. Anything else (another codec, Annex-B streams, VFR, edit-list
discards, a file PyAV cannot open) gets ``None``, and the caller decodes every frame as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.media.libav import open_input, pyav

log = logging.getLogger(__name__)

FPS_TOLERANCE = 1e-3  # relative: the packets' grid against the caller's rate
MAX_DROPS = 1500  # packets one filter drops (its expression stays ~55 KB, inside one argument's 128 KB)
_SLICES = (1, 5)  # NAL unit types of coded slices (non-IDR, IDR)


@dataclass(frozen=True)
class Skip:
    """Packets to drop before decoding, and how filters find a frame's index past them."""

    offsets: tuple[int, ...]  # the dropped packets' pts less the first packet's, ascending (stream time base)
    fps: float  # frames per second of the stream's grid
    frames: int  # packets (frames) in the stream

    @property
    def index(self) -> str:
        """An ffmpeg expression (commas escaped for a filter graph) of a decoded frame's index in
        the stream, for ``select`` in place of ``n``: its time on the grid from the first frame."""
        return f"floor((t-start_t)*{self.fps!r}+0.5)"

    def input_args(self) -> list[str]:
        """ffmpeg input options (before ``-i``) that drop the packets."""
        return ["-bsf:v:0", f"noise=drop={_member(list(self.offsets))}"]  # the first video stream only

    def frames_from(self, decoded: int) -> int:
        """The stream's frames, from the frames a decode with these drops gave (where the filter
        dropped nothing, the decoded ones are all; a frame that failed to decode is missing in both)."""
        return min(decoded + len(self.offsets), self.frames)


@dataclass(frozen=True)
class Refs:
    """Each packet's pts and whether its picture can be a reference, in display order."""

    pts: tuple[int, ...]
    reference: tuple[bool, ...]
    fps: float
    first: int  # the first packet's pts, in decode order (the filter's ``startpts``)

    def skip(self, wanted: Callable[[int], bool], *, fps: float) -> Skip | None:
        """The non-reference pictures whose display index is not ``wanted`` (at most MAX_DROPS,
        the first ones). ``fps``: the rate the caller numbers frames at (the probe's). None where
        there is none to drop, or where the packets' grid is not that rate (within 0.1 %)."""
        if abs(self.fps / fps - 1) > FPS_TOLERANCE:
            return None
        drop = [p - self.first for i, (p, ref) in enumerate(zip(self.pts, self.reference)) if not ref and not wanted(i)]
        return Skip(tuple(drop[:MAX_DROPS]), self.fps, len(self.pts)) if drop else None


def frame_number(skip: Skip | None) -> str:
    """The ffmpeg expression of a decoded frame's number in the stream: ``n``, or past drops
    :attr:`Skip.index`."""
    return "n" if skip is None else skip.index


def scan(path: str | os.PathLike[str]) -> Refs | None:
    """The first video stream's packets (see the module doc); None where dropping does not apply."""
    av = pyav()
    if av is None:
        return None
    try:
        with open_input(av, path) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            size = _length_size(stream.codec_context.name, stream.codec_context.extradata)
            if size is None:
                return None
            packets = []
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                ref = _reference(memoryview(packet), size)
                if packet.pts is None or packet.is_discard or ref is None:
                    return None
                packets.append((packet.pts, ref))
            time_base = stream.time_base
    except (av.FFmpegError, OSError, ValueError) as exc:
        log.debug("%s: packets not scanned (%s)", os.path.basename(path), exc)
        return None
    first = packets[0][0] if packets else 0
    packets.sort()
    pts = tuple(p for p, _ in packets)
    steps = {b - a for a, b in zip(pts, pts[1:])}
    if len(steps) != 1 or steps == {0} or time_base is None:  # one frame, a gap, a repeat or VFR
        return None
    return Refs(pts, tuple(r for _, r in packets), float(1 / (steps.pop() * time_base)), first)


def _length_size(codec: str, extradata: bytes | None) -> int | None:
    """The NAL length prefix's bytes of an H.264 stream in MP4 form (avcC extradata)."""
    if codec != "h264" or not extradata or len(extradata) < 7 or extradata[0] != 1:
        return None  # not H.264, or Annex-B start codes
    return (extradata[4] & 3) + 1


def _reference(data: memoryview, size: int) -> bool | None:
    """Whether the picture in ``data`` (length-prefixed NAL units) can be a reference: its first
    slice's nal_ref_idc is not 0 (the standard makes it the same in every slice of a picture).
    None where no slice is found (a malformed packet)."""
    at = 0
    while at + size < len(data):
        length = int.from_bytes(data[at:at + size], "big")
        header = data[at + size]
        if header & 0x1F in _SLICES:
            return bool(header & 0x60)
        at += size + length
    return None


def _member(values: list[int]) -> str:
    """An ffmpeg expression true where a packet's ``pts - startpts`` is one of the sorted
    ``values``: a binary search (``if`` evaluates one branch), so each packet costs ~log2(len)
    comparisons, and the nesting stays shallow for ffmpeg's parser."""
    if len(values) <= 4:
        return "+".join(f"eq(pts-startpts\\,{v})" for v in values)
    mid = len(values) // 2
    return f"if(lt(pts-startpts\\,{values[mid]})\\,{_member(values[:mid])}\\,{_member(values[mid:])})"
