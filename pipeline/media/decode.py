"""Streaming video decode through ffmpeg pipes, frame counting, the output frame plan and
the source frames in plan order.

Memory never grows with the video's length: ``read_frames`` yields one frame at a time from
an ffmpeg ``rawvideo`` pipe (the encoder side is ``pipeline.media.encode.FrameWriter``), and
``plan_frames`` spools to the job folder only the frames a plan shows again. ffmpeg's stderr
goes to a temporary file, so a chatty ffmpeg can never fill a pipe and deadlock; its tail is
put into ``FFmpegError`` when ffmpeg fails.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.device import decode_threads
from pipeline.media import libav, noref
from pipeline.errors import FFmpegError, InvalidMedia
from pipeline.media.ffmpeg import PIX_FMTS, base_cmd, grow_pipe, input_args, popen, rate_str, run_ffmpeg, stderr_tail
from pipeline.media.probe import MediaInfo, probe, require_stream
from pipeline.media.yuv import YuvFrame

log = logging.getLogger(__name__)

_PROGRESS_FRAME_RE = re.compile(r"^frame=(\d+)$", re.M)  # ffmpeg -progress key=value lines

TRACKING_SCALER = "fast_bilinear"  # swscale flags for the reduced-size decode used by tracking
COUNT_TIMEOUT_S = 120.0  # a generous bound: counting decodes only for resampled streams
SELECT_MAX_TERMS = 64  # read_frames(select=) indices ffmpeg's select filter takes (its parser fails ~110)


def read_frames(path: str | os.PathLike[str], *, size: tuple[int, int] | None = None,
                fps: float | None = None, info: MediaInfo | None = None,
                pix_fmt: str = "bgr24", select: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """Yield BGR uint8 frames (H, W, 3) in display orientation, one at a time.

    ``size=(w, h)`` decodes scaled (fast scaler; for face tracking). ``fps=None`` keeps the
    probed rate: frames pass through one for one, except that a VFR stream is resampled to
    constant rate at its average fps. A given ``fps`` always resamples to that constant
    rate. A still image yields its single frame. ``info`` skips the probe when the caller
    has one. ffmpeg starts on the first ``next()`` and is killed when the generator is
    closed (also on an early ``break``). Raises InvalidMedia (before the first frame, for
    inputs without a video stream) and FFmpegError (ffmpeg failed while decoding).
    ``pix_fmt="yuv420p"`` yields raw I420 buffers (H * 3 // 2, W) instead (see
    pipeline.media.yuv), cropped to even sides as the encoder would crop them.
    ``select`` yields only the frames with those indices (counted after any resampling;
    ascending, each once, those past the end left out): ffmpeg still decodes up to the last
    one, but converts and pipes only these (beyond SELECT_MAX_TERMS indices every frame is
    piped and the others dropped here), and, at the stream's own rate, leaves out the H.264
    pictures nothing predicts from before its decoder (``pipeline.media.noref``). An empty
    ``select`` yields nothing.
    Full-size I420 frames at the stream's own rate (the run loop's decode) are decoded in
    this process where ``pipeline.media.libav`` applies: the same frames, no pipe.
    """
    path = os.fspath(path)
    info = info or probe(path)
    require_stream(info, "video")
    w, h = size or info.video.display_size
    if w <= 0 or h <= 0:
        raise ValueError(f"invalid decode size {w}x{h}")
    if pix_fmt not in PIX_FMTS:
        raise ValueError(f"pix_fmt must be one of {', '.join(PIX_FMTS)}, got {pix_fmt!r}")
    filters = _rate_filters(info, fps)
    wanted = None if select is None else sorted({int(i) for i in select})
    skip = None
    if wanted is not None:
        if not wanted:
            return iter(())
        if wanted[0] < 0:
            raise ValueError(f"frame indices must be non-negative, got {wanted[0]}")
        if len(wanted) <= SELECT_MAX_TERMS:
            skip = None if filters else _unread(path, info, wanted)
            filters.append(f"select='{select_expr(wanted, noref.frame_number(skip))}'")
    # the same frames without the pipe, decoded here (pipeline.media.libav)
    in_process = (pix_fmt == "yuv420p" and size is None and not filters and wanted is None
                  and libav.applies(info))
    if pix_fmt == "yuv420p" and (w % 2 or h % 2):
        if size:
            raise ValueError(f"yuv420p frames need even sides, got {w}x{h}")
        w, h = w - w % 2, h - h % 2
        filters.append(f"crop={w}:{h}:0:0")
    # a final scale pins the output size, so the byte stream can never be misframed
    flags = f":flags={TRACKING_SCALER}" if size else ""
    filters.append(f"scale={w}:{h}{flags}")
    cmd = [*base_cmd(), "-loglevel", "error", *decoder_input(path, skip=skip), "-map", "0:v:0",
           "-an", "-sn", "-dn", "-vf", ",".join(filters)]
    if info.is_image:
        cmd += ["-frames:v", "1"]
    if wanted is not None and len(wanted) <= SELECT_MAX_TERMS:
        cmd += ["-fps_mode", "passthrough"]  # no duplicated frames filling the gaps
    cmd += ["-pix_fmt", pix_fmt, "-f", "rawvideo", "pipe:1"]
    if in_process:
        return libav.libav_frames(info, threads=decode_threads(),
                                         pipe=lambda: pipe_frames(cmd, w, h, path, pix_fmt=pix_fmt))
    frames = pipe_frames(cmd, w, h, path, pix_fmt=pix_fmt)
    if wanted is None or len(wanted) <= SELECT_MAX_TERMS:
        return frames
    return _only(frames, wanted)


def decoder_input(path: str | os.PathLike[str], *, skip: noref.Skip | None = None) -> list[str]:
    """``-i`` arguments for a file whose video is decoded to frames (``decode_threads()`` threads),
    dropping ``skip``'s packets before the decoder."""
    drops = [] if skip is None else skip.input_args()
    return input_args(path, pre=[*drops, "-threads", str(decode_threads())])


def _only(frames: Iterator[np.ndarray], wanted: list[int]) -> Iterator[np.ndarray]:
    """The frames at the (sorted) ``wanted`` indices; stops decoding after the last one."""
    keep = set(wanted)
    try:
        for i, frame in enumerate(frames):
            if i in keep:
                yield frame
                if i == wanted[-1]:
                    return
    finally:
        frames.close()


def count_frames(path: str | os.PathLike[str], *, fps: float | None = None,
                 info: MediaInfo | None = None, timeout: float = COUNT_TIMEOUT_S) -> int:
    """How many frames ``read_frames(path, fps=fps)`` yields, known before decoding them.

    The container's duration can promise more frames than the video stream holds (an
    audio track that runs on). Without resampling the video packets are counted (a
    demux pass: about 0.1 s for a 14 s 720p clip); where ``read_frames`` resamples (a
    given ``fps`` or a VFR stream) the frames are decoded and counted, not kept.
    """
    path = os.fspath(path)
    info = info or probe(path)
    require_stream(info, "video")
    if info.is_image:
        return 1
    filters = _rate_filters(info, fps)
    codec = ["-vf", ",".join(filters)] if filters else ["-c", "copy"]
    stderr = run_ffmpeg([*input_args(path), "-map", "0:v:0", "-an", "-sn", "-dn", *codec,
                         "-nostats", "-progress", "pipe:2", "-f", "null", "-"],
                        what=f"counting the frames of {os.path.basename(path)}", timeout=timeout)
    counts = _PROGRESS_FRAME_RE.findall(stderr)
    if not counts:
        raise FFmpegError(f"counting the frames of {os.path.basename(path)}: ffmpeg reported no count")
    return int(counts[-1])


def _unread(path: str, info: MediaInfo, wanted: list[int]) -> noref.Skip | None:
    """The packets a decode of only the ``wanted`` frames (at the stream's own rate) can drop."""
    refs = noref.scan(path)
    return None if refs is None else refs.skip(set(wanted).__contains__, fps=info.video.fps)


def _rate_filters(info: MediaInfo, fps: float | None) -> list[str]:
    """The fps filter ``read_frames`` applies: for a given rate, or CFR for a VFR stream."""
    if info.is_image or (fps is None and not info.video.vfr):
        return []
    return [f"fps=fps={rate_str(fps or info.video.fps)}"]


def select_expr(indices: Sequence[int], index: str = "n") -> str:
    """ffmpeg ``select`` expression taking exactly these frame numbers (at most SELECT_MAX_TERMS;
    commas escaped for a filter graph); "0" (no frame) for none. ``index``: the expression of a
    frame's number (``pipeline.media.noref.Skip.index`` where packets were dropped)."""
    return "+".join(f"eq({index}\\,{int(i)})" for i in indices) or "0"


def pipe_frames(cmd: list[str], w: int, h: int, path: str, *, pix_fmt: str = "bgr24",
                 on_start: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
    """The frames ffmpeg ``cmd`` writes to its stdout. ``on_start`` is called once ffmpeg is
    started, before the first read: work that needs no frame fills ffmpeg's start-up (~40 ms)."""
    name = os.path.basename(path)
    # BGR pixels, grey, or I420 planes
    shape = {"bgr24": (h, w, 3), "gray": (h, w)}.get(pix_fmt, (h * 3 // 2, w))
    nbytes = int(np.prod(shape))
    log.debug("decode: %s", " ".join(cmd))
    with tempfile.TemporaryFile() as err:
        proc = popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, bufsize=0)
        grow_pipe(proc.stdout)
        count = 0
        try:
            if on_start is not None:
                on_start()
            while True:
                frame = np.empty(shape, np.uint8)
                got = _read_exact(proc.stdout, memoryview(frame).cast("B"))
                if got == 0:
                    break
                if got < nbytes:
                    log.warning("%s: ffmpeg ended inside frame %d (%d of %d bytes); dropped it",
                                name, count, got, nbytes)
                    break
                count += 1
                yield frame
            rc = proc.wait()
            if rc != 0:
                raise FFmpegError(f"decoding {name} failed (ffmpeg exit {rc}): {stderr_tail(err, path)}")
            if count == 0:
                raise InvalidMedia(f"{name}: no video frame could be decoded ({stderr_tail(err, path) or 'no error'})")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()


def _read_exact(stream: IO[bytes], buf: memoryview) -> int:
    got = 0
    while got < len(buf):
        n = stream.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def frame_plan(n_source: int, n_out: int, mode: str = "pingpong") -> np.ndarray:
    """Source frame index for each of ``n_out`` output frames, int64 (n_out,).

    n_out <= n_source cuts; "loop" repeats 0..N-1; "pingpong" runs 0..N-1, N-2..1, 0..
    (no frame repeated at a turn). A single source frame gives all zeros.
    """
    if n_source < 1:
        raise ValueError(f"n_source must be at least 1, got {n_source}")
    if n_out < 0:
        raise ValueError(f"n_out must be non-negative, got {n_out}")
    if mode not in ("pingpong", "loop"):
        raise ValueError(f"unknown mode {mode!r} (use 'pingpong' or 'loop')")
    i = np.arange(n_out, dtype=np.int64)
    if n_out <= n_source:
        return i
    if n_source == 1:
        return np.zeros(n_out, np.int64)
    if mode == "loop":
        return i % n_source
    period = 2 * (n_source - 1)  # 0..N-1 then N-2..1
    k = i % period
    return np.where(k < n_source, k, period - k)


def plan_frames(source: Iterator[np.ndarray], info: MediaInfo, plan: np.ndarray,
                workdir: Path) -> Iterator[YuvFrame]:
    """Full-size source frames (I420, see pipeline.media.yuv) in ``plan`` order, bounded memory.

    A forward plan streams straight from ffmpeg. A plan that revisits frames (the audio is
    longer than the video) spools the frames it shows again, on their first pass, into one
    raw file in the job folder and reads them back from it, so memory never grows with the
    output length.
    ``source`` is the decoder's I420 frames (``read_frames(..., pix_fmt="yuv420p")``).
    Every yielded frame is a fresh buffer: the caller pastes into it.
    """
    # Frames shown again later (a ping-pong or loop extension) are spooled on first sight;
    # only those: a plan extended by a few frames spools a few frames, not the whole clip.
    prev_max = np.concatenate([[-1], np.maximum.accumulate(plan)[:-1]])  # (N,) max index shown before
    slots = {int(i): k for k, i in enumerate(np.unique(plan[plan <= prev_max]))}
    spool_path = workdir / "frames.raw"
    spool = None if not slots or info.is_image else open(spool_path, "w+b")
    try:
        if info.is_image:
            still = next(source)
            for _ in plan:
                yield YuvFrame(still.copy())
            return
        seen = 0
        last: np.ndarray | None = None
        for idx in plan:
            if idx >= seen:
                frame = next(source, None)
                if frame is None:  # the decoder gave fewer frames than counted: repeat the last
                    frame = last.copy()
                else:
                    if seen in slots:
                        spool.seek(slots[seen] * frame.nbytes)
                        spool.write(memoryview(frame).cast("B"))
                    seen += 1
                    last = frame  # (only repeated if the decoder runs short: rare, harmless)
                yield YuvFrame(frame)
            else:  # idx < seen: decoded already, and shown before, so it is in slots and spooled
                buf = np.empty_like(last)  # (H * 3 / 2, W)
                spool.seek(slots[int(idx)] * buf.nbytes)
                spool.readinto(memoryview(buf).cast("B"))
                yield YuvFrame(buf)
    finally:
        if spool is not None:
            spool.close()
            spool_path.unlink(missing_ok=True)


def decode_rate(info: MediaInfo, fps: float) -> float | None:
    """The ``fps`` to ask the decoder for: None (the stream's own constant rate, which lets
    frame counting skip decoding) when that is already ``fps``."""
    if info.is_image or (not info.video.vfr and abs(info.video.fps - fps) < 1e-6):
        return None
    return fps
