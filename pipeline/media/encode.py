"""Encoding frames to an H.264 MP4 through an ffmpeg pipe, with the driving audio muxed.

``FrameWriter`` feeds raw frames (BGR or I420) to libx264 or NVENC, yuv420p with
``+faststart`` so browsers play the file at once. ffmpeg's stderr goes to a temporary file
(a chatty ffmpeg can never fill a pipe and deadlock) and its tail goes into ``FFmpegError``.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import tempfile
from types import TracebackType
from collections.abc import Mapping
from typing import IO

import numpy as np

from pipeline.errors import FFmpegError, InvalidOption
from pipeline.media.ffmpeg import PIX_FMTS, base_cmd, grow_pipe, input_args, popen, rate_str, stderr_tail

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0  # how long to wait for ffmpeg to exit after a pipe broke

ENCODER_ENV = "LIPSYNC_ENCODER"  # the CLI's and the app's encoder: auto (default), libx264, h264_nvenc
NVENC_DEVICE = "/dev/nvidiactl"  # present where an NVIDIA driver is loaded
NVENC_CHECK_TIMEOUT_S = 20.0

# libx264 preset names mapped to NVENC's p1 (fastest) .. p7 (slowest)
NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
                 "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7"}


class FrameWriter:
    """Encode BGR frames to an H.264 MP4 through an ffmpeg pipe; optionally mux audio.

    Odd frame sizes are cropped to even (yuv420p needs even sides): ``out_size`` is the
    size written. With ``audio_path`` the first audio stream is encoded whole as AAC: the
    caller writes a video as long as the audio, so neither length needs knowing when ffmpeg
    starts (no ``-shortest``, whose sync queue holds ~200 raw 720p frames in ffmpeg: 0.5 s
    more wall for a 14 s clip on 2 cores, twice the memory). Use as a context manager: an
    exception inside the block kills ffmpeg and removes the partial file.
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, fps: float, *,
                 audio_path: str | os.PathLike[str] | None = None, crf: int = 18,
                 preset: str = "veryfast", encoder: str = "libx264", audio_bitrate: str = "128k",
                 pix_fmt: str = "bgr24") -> None:
        if pix_fmt not in PIX_FMTS:
            raise ValueError(f"pix_fmt must be one of {', '.join(PIX_FMTS)}, got {pix_fmt!r}")
        if pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise ValueError(f"yuv420p frames need even sides, got {width}x{height}")
        if width < 2 or height < 2:
            raise ValueError(f"frame size {width}x{height} is too small to encode")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = os.fspath(path)
        self.size = (width, height)
        self.pix_fmt = pix_fmt
        self._shape = (height, width, 3) if pix_fmt == "bgr24" else (height * 3 // 2, width)
        self.out_size = (width - width % 2, height - height % 2)
        self.frames_written = 0
        self._closed = False
        cmd = [*base_cmd(), "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{width}x{height}", "-r", rate_str(fps),
               "-i", "pipe:0"]
        if audio_path is not None:
            cmd += input_args(audio_path)
        cmd += ["-map", "0:v:0"]
        if audio_path is not None:
            cmd += ["-map", "1:a:0"]
        if self.out_size != self.size:
            cmd += ["-vf", "crop={}:{}:0:0".format(*self.out_size)]
        cmd += video_codec_args(encoder, preset=preset, crf=crf)
        cmd += ["-pix_fmt", "yuv420p"]
        if audio_path is not None:
            cmd += ["-c:a", "aac", "-b:a", audio_bitrate]
        cmd += ["-movflags", "+faststart", self.path]
        log.debug("encode: %s", " ".join(cmd))
        self._err = tempfile.TemporaryFile()
        self._proc = popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        grow_pipe(self._proc.stdin)

    @property
    def pipe(self) -> IO[bytes]:
        """The pipe ffmpeg reads raw frames from: another process may write into it directly
        (bench/overhead_vs_ffmpeg.py joins a decoder to it); ``close`` still finishes the file."""
        return self._proc.stdin

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 frame: BGR (H, W, 3), or I420 planes (H * 3 // 2, W) for yuv420p."""
        if frame.shape != self._shape or frame.dtype != np.uint8:
            raise ValueError(f"expected a {self._shape} uint8 frame, got {frame.shape} {frame.dtype}")
        if self._closed:
            raise ValueError("write() on a closed FrameWriter")
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
                self.frames_written += 1
                return
            except (BrokenPipeError, ConnectionResetError, OSError) as exc:
                what = f"ffmpeg stopped reading frames ({exc.__class__.__name__})"
        else:
            what = "ffmpeg exited before all frames were written"
        self._fail(what)

    def close(self) -> None:
        """Finish the file; raises FFmpegError (with ffmpeg's stderr) when encoding failed."""
        if self._closed:
            return
        self._closed = True
        try:
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the exit status below tells what happened
        rc = self._proc.wait()
        try:
            if rc != 0:
                self._remove_output()  # a failed encode leaves no partial file behind
                raise FFmpegError(f"encoding {os.path.basename(self.path)} failed (ffmpeg exit {rc}): "
                                  f"{stderr_tail(self._err)}")
        finally:
            self._err.close()

    def abort(self) -> None:
        """Kill ffmpeg and remove the partial output."""
        if not self._closed:
            self._closed = True
            self._proc.kill()
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.wait()
            self._err.close()
        self._remove_output()

    def _remove_output(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _wait_exit(self) -> int:
        try:
            return self._proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()

    def _fail(self, what: str) -> None:
        self._closed = True
        self._wait_exit()
        tail = stderr_tail(self._err)
        self._err.close()
        raise FFmpegError(f"encoding {os.path.basename(self.path)} failed: {what} "
                          f"(ffmpeg exit {self._proc.returncode}): {tail}")

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@functools.cache
def nvenc_usable() -> bool:
    """Whether ``h264_nvenc`` encodes on this machine: an NVIDIA driver is loaded and a tiny
    test encode through this ffmpeg succeeds (the build has NVENC, and so does the GPU: an
    H100 has none). Checked once per process, without CUDA in this process; on a machine
    without the driver it costs nothing."""
    if not os.path.exists(NVENC_DEVICE):
        return False
    cmd = [*base_cmd(), "-f", "lavfi", "-i", "color=c=black:s=256x256:r=25:d=0.2",
           "-c:v", "h264_nvenc", "-f", "null", "-"]
    try:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=True,
                       timeout=NVENC_CHECK_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("h264_nvenc is not usable here (%s): encoding with libx264", type(exc).__name__)
        return False
    return True


def choose_encoder(name: str) -> str:
    """The encoder for ``name`` (``pipeline.options.ENCODERS``): ``auto`` is h264_nvenc where
    :func:`nvenc_usable`, else libx264."""
    if name == "auto":
        return "h264_nvenc" if nvenc_usable() else "libx264"
    return name


def encoder_from_env(env: Mapping[str, str] | None = None) -> str:
    """``$LIPSYNC_ENCODER`` as the CLI's default and the app's setting: unset or empty is
    ``auto``, case and spaces are ignored; InvalidOption naming the variable and the choices
    for anything else."""
    from pipeline.options import ENCODERS

    value = (os.environ if env is None else env).get(ENCODER_ENV) or ""
    name = value.strip().lower() or "auto"
    if name not in ENCODERS:
        raise InvalidOption(f"{ENCODER_ENV}={value!r}: choose one of {', '.join(ENCODERS)}")
    return name


def video_codec_args(encoder: str, *, preset: str, crf: int) -> list[str]:
    """ffmpeg output arguments for libx264 or NVENC at a libx264 preset name and CRF."""
    if encoder == "libx264":
        return ["-c:v", "libx264", "-preset", preset, "-crf", str(crf)]
    if encoder == "h264_nvenc":
        return ["-c:v", "h264_nvenc", "-preset", NVENC_PRESETS.get(preset, preset),
                "-rc", "vbr", "-cq", str(crf), "-b:v", "0"]
    raise ValueError(f"unknown encoder {encoder!r} (use 'libx264' or 'h264_nvenc')")
