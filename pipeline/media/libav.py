"""In-process decoding of full-size I420 frames through libavcodec (PyAV), for the run loop.

``read_frames(path, pix_fmt="yuv420p")`` at the stream's own size and rate is the run loop's
(and scoring's) full-size decode. Through an ffmpeg pipe each frame costs three extra copies
(ffmpeg's rawvideo packet, the pipe's write and read) and a second process competing with the
encoder for the cores: on 2 cores that was 0.1x of a bare transcode's wall time
(bench/overhead_vs_ffmpeg.py). Here the same libavcodec decodes in this process, with the GIL
released while it decodes, and each frame is copied once, from the decoder's planes into the
I420 buffer the caller gets.

It is used only where its frames are the pipe's frames, byte for byte: a video (not a still
image) whose first video stream is 8-bit yuv420p, not rotated and not resampled (constant
rate), so ffmpeg would neither convert, rotate nor drop/duplicate a frame. Everything else,
and any input PyAV cannot open, goes through the ffmpeg pipe. ``LIPSYNC_DECODER=pipe``
always uses the pipe. Inputs are opened with the same protocol and demuxer whitelists as
every ffmpeg command (pipeline.media.ffmpeg.input_args).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Iterator

import numpy as np

from pipeline.errors import FFmpegError, InvalidMedia
from pipeline.media.ffmpeg import SAFE_DEMUXERS
from pipeline.media.probe import MediaInfo
from pipeline.media.yuv import YuvFrame

log = logging.getLogger(__name__)

DECODER_ENV = "LIPSYNC_DECODER"  # "auto" (default): in-process where it applies; "pipe": always ffmpeg
MAX_BAD_PACKETS = 1000  # packets the decoder may reject (corrupt data) before the decode fails
# How far (in frames) a frame's start and length may be off the grid: within this, ffmpeg's
# constant-rate output shows the frame exactly once (it duplicates past +0.5, drops past -2.1)
GRID_SLACK = 0.25


def applies(info: MediaInfo) -> bool:
    """Whether this input's full-size I420 decode (at its own rate) runs in-process."""
    if os.environ.get(DECODER_ENV, "auto") == "pipe" or info.is_image or info.video is None:
        return False
    v = info.video
    return v.pix_fmt == "yuv420p" and v.rotation == 0 and not v.vfr and pyav() is not None


def libav_frames(info: MediaInfo, *, threads: int,
                 pipe: Callable[[], Iterator[np.ndarray]]) -> Iterator[np.ndarray]:
    """I420 frames (H * 3 // 2, W), cropped to even sides, of ``info``'s first video stream:
    the frames ``pipe()`` (the ffmpeg pipe's decode of the same stream) yields, decoded here.

    Each frame must fall on the pipe's constant-rate grid (frame n at n / fps from the file's
    start, lasting one frame), where ffmpeg passes it one for one, and keep the stream's size
    and format. Where one does not (a stream that starts late, a gap, a frame shown longer,
    a size change), ffmpeg would duplicate, drop or scale frames: from that frame on, the
    frames come from ``pipe()``, its first frames skipped.
    Where PyAV cannot open the file at all, every frame comes from ``pipe()``. A packet the
    decoder rejects is skipped, as ffmpeg skips it. Decoding starts on the first ``next()``;
    closing the generator closes the file. Raises InvalidMedia when no frame could be
    decoded, FFmpegError when more than MAX_BAD_PACKETS packets were rejected.
    """
    av = pyav()
    try:  # opened on the first next(), in the thread that reads the frames
        container = open_input(av, info.path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        log.debug("%s: PyAV cannot open it (%s); decoding through the ffmpeg pipe", info.name, exc)
        yield from pipe()
        return
    try:
        usable = container.streams.video and container.streams.video[0].guessed_rate is not None
        handover = (yield from _decode(container, container.streams.video[0], info, threads)) if usable else 0
    finally:
        container.close()
    if handover is not None:
        log.debug("%s: from frame %d on (off the constant-rate grid, resized, or no rate known) through "
                  "the ffmpeg pipe", info.name, handover)
        yield from _after(pipe(), handover)


def _decode(container, stream, info: MediaInfo,  # noqa: ANN001 - PyAV objects
            threads: int) -> Generator[np.ndarray, None, int | None]:
    """Yield the stream's frames while they are the pipe's; return None after the last, or
    the index of the first that is not (the pipe gives the rest from there)."""
    av = pyav()
    stream.codec_context.thread_count = threads  # 0: as many as the cores, as ffmpeg's -threads 0
    if threads != 1:
        stream.thread_type = "AUTO"
    width, height = info.video.display_size
    w, h = width - width % 2, height - height % 2  # yuv420p frames need even sides: crop as the pipe does
    rate = stream.guessed_rate  # the pipe's output rate (ffmpeg's guess for the stream)
    tick = float(stream.time_base * rate)  # frames per time-base unit
    origin = (container.start_time or 0) / 1e6 * float(rate)  # the file's start, in frames
    count = bad = 0
    try:
        for packet in container.demux(stream):  # the last packet is empty: it flushes the decoder
            try:
                decoded = stream.decode(packet)
            except av.FFmpegError as exc:  # ffmpeg logs and skips a packet it cannot decode; so do we
                bad += 1
                if bad > MAX_BAD_PACKETS:
                    raise FFmpegError(f"decoding {info.name} failed: {bad} corrupt packets ({exc})") from exc
                continue
            for frame in decoded:
                # a frame ffmpeg would repeat or drop, or scale (the stream changed size or format)
                if not _on_grid(frame, count, tick, origin) or (frame.format.name, frame.width, frame.height) \
                        != ("yuv420p", width, height):
                    return count
                yield _i420(frame, w, h)
                count += 1
    except av.FFmpegError as exc:  # a demux error mid-file (truncated data): ffmpeg ends the stream there
        if count == 0:
            raise InvalidMedia(f"{info.name}: no video frame could be decoded ({exc})") from exc
        log.warning("%s: decoding stopped after frame %d: %s", info.name, count, exc)
    if count == 0:
        raise InvalidMedia(f"{info.name}: no video frame could be decoded (no error)")
    return None


def _on_grid(frame, n: int, tick: float, origin: float) -> bool:  # noqa: ANN001 - an av.VideoFrame
    """Whether the pipe (ffmpeg's constant-rate output) shows ``frame`` as its frame ``n``,
    once: it starts within GRID_SLACK frames of n and lasts one frame (or has no duration)."""
    if frame.pts is None:
        return False
    start = frame.pts * tick - origin
    length = (frame.duration or 0) * tick
    return abs(start - n) <= GRID_SLACK and (length == 0 or abs(length - 1) <= GRID_SLACK)


def _after(frames: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """``frames`` from the n-th on (closing this closes ``frames``)."""
    for _ in range(n):
        if next(frames, None) is None:
            return
    yield from frames


def _i420(frame, w: int, h: int) -> np.ndarray:  # noqa: ANN001 - an av.VideoFrame
    """The frame's planes, top-left w x h, as one I420 buffer (h * 3 // 2, w)."""
    out = YuvFrame(np.empty((h * 3 // 2, w), np.uint8))
    for dst, src in zip(out.planes(), frame.planes):  # Y (h, w), U and V (h/2, w/2); src rows padded
        dst[:] = np.frombuffer(src, np.uint8).reshape(-1, src.line_size)[:dst.shape[0], :dst.shape[1]]
    return out.data


def open_input(av, path: str | os.PathLike[str]):  # noqa: ANN001, ANN201 - the av module, an InputContainer
    """``path`` opened by PyAV with the protocol and demuxer whitelists of every ffmpeg command."""
    return av.open("file:" + os.fspath(path), options={"protocol_whitelist": "file", "format_whitelist": SAFE_DEMUXERS})


def pyav():  # noqa: ANN202 - the av module, or None where PyAV is not installed
    try:
        import av
    except ImportError:
        return None
    return av
