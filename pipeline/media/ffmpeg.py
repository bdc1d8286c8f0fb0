"""Locating and running ffmpeg, and what its frame pipes share (rate strings, pipe size,
stderr tails) between the decoder (``pipeline.media.decode``) and the encoder (``pipeline.media.encode``).

ffmpeg on PATH wins; otherwise the static binary shipped by ``imageio-ffmpeg`` is used,
so nothing requires a system ffmpeg. There is no ffprobe: probing parses ``ffmpeg -i``.

Inputs are always opened with a plain-file protocol whitelist and a demuxer whitelist,
so a crafted playlist or concat file cannot make ffmpeg read other files or the network.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import IO, Any

from pipeline.errors import FFmpegError

log = logging.getLogger(__name__)

STDERR_TAIL = 1500  # characters of ffmpeg's stderr kept in an FFmpegError
PIPE_SIZE = 1 << 20  # bytes; a larger OS pipe buffer means fewer wakeups per 720p frame (2.7 MB)
F_SETPIPE_SZ = 1031  # Linux fcntl command (not exported by Python's fcntl before 3.10 on all builds)
PIX_FMTS = ("bgr24", "yuv420p")  # frame formats the frame pipes carry (read_frames yields, FrameWriter takes)

# Demuxers a face video, a still photo or a speech track may use. Playlist and
# indirection demuxers (hls, concat, ...) are absent on purpose.
SAFE_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,ogg,wav,w64,aiff,mp3,"
    "aac,flac,caf,asf,amr,h264,hevc,m4v,rawvideo,gif,image2,png_pipe,jpeg_pipe,"
    "webp_pipe,bmp_pipe,tiff_pipe,image_png_pipe,image_jpeg_pipe,image_webp_pipe,"
    "image_bmp_pipe,image_tiff_pipe,ivf,yuv4mpegpipe,wv,ape,dv,nut"
)


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$LIPSYNC_FFMPEG``, then PATH, then imageio-ffmpeg's."""
    explicit = os.environ.get("LIPSYNC_FFMPEG")
    if explicit:
        return explicit
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    bundled = _bundled_ffmpeg()
    if bundled:
        return bundled
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _bundled_ffmpeg() -> str | None:
    """The one binary of imageio-ffmpeg's platform wheel (``imageio_ffmpeg/binaries/ffmpeg-*``),
    found on disk; None where that is not so (``$IMAGEIO_FFMPEG_EXE`` set, another layout).
    ``imageio_ffmpeg.get_ffmpeg_exe()`` imports the package and runs ``ffmpeg -version`` to
    check the binary first: 40-60 ms at the start of every process (a CLI job waits for it
    before its first probe); a binary that cannot run fails the first command instead, with
    ffmpeg's message."""
    if os.environ.get("IMAGEIO_FFMPEG_EXE"):
        return None
    spec = importlib.util.find_spec("imageio_ffmpeg")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = [entry.path for loc in spec.submodule_search_locations
             if os.path.isdir(folder := os.path.join(loc, "binaries"))
             for entry in os.scandir(folder)
             if entry.name.startswith("ffmpeg-") and entry.is_file() and os.access(entry.path, os.X_OK)]
    return found[0] if len(found) == 1 else None


def input_args(path: str | os.PathLike[str], *, pre: Sequence[str] = ()) -> list[str]:
    """``-i`` arguments for a local file, restricted to plain files and safe demuxers.

    The path is given as ``file:PATH``, so a name such as ``concat:a|b`` or ``data:...`` is
    a file name, never a protocol; the protocol whitelist keeps nested opens (a playlist's
    segments, a reference movie's data) to plain files, and the demuxer whitelist leaves
    out every demuxer that opens further URLs (hls, dash, concat, ...). ``pre`` holds
    input options that go before these.
    """
    return [
        *pre,
        "-protocol_whitelist", "file",
        "-format_whitelist", SAFE_DEMUXERS,
        "-i", "file:" + os.fspath(path),
    ]


def base_cmd() -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y"]


def run_ffmpeg(args: Sequence[str], *, what: str, timeout: float | None = None) -> str:
    """Run ffmpeg with ``args`` (after the common flags); return stderr; raise FFmpegError."""
    return ffmpeg_output(args, what=what, timeout=timeout)[1]


def ffmpeg_output(args: Sequence[str], *, what: str, timeout: float | None = None,
                  hide: str | None = None) -> tuple[bytes, str]:
    """Run ffmpeg with ``args`` (after the common flags): (stdout, stderr). Raises FFmpegError
    naming ``what`` with the tail of ffmpeg's stderr, in which ``hide`` (an input's full
    path) is replaced by its base name."""
    cmd = [*base_cmd(), "-loglevel", "error", *args]
    log.debug("ffmpeg: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FFmpegError(f"{what}: ffmpeg ran past {timeout:.0f} s") from exc
    stderr = proc.stderr.decode("utf-8", "replace")
    if hide:
        stderr = stderr.replace(hide, os.path.basename(hide))
    if proc.returncode != 0:
        raise FFmpegError(f"{what} failed (ffmpeg exit {proc.returncode}): {stderr[-STDERR_TAIL:].strip()}")
    return proc.stdout, stderr


def rate_str(fps: float) -> str:
    """An ffmpeg rate: 30000/1001 for 29.97, 25 for 25.0."""
    frac = Fraction(fps).limit_denominator(1001)
    return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"


def grow_pipe(stream: IO[bytes]) -> None:
    """Grow a pipe to PIPE_SIZE bytes where the OS allows (Linux): fewer wakeups per frame."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, OSError):
        pass  # a smaller pipe only costs a few more wakeups


def stderr_tail(err: IO[bytes], path: str | None = None) -> str:
    """The last STDERR_TAIL characters of ffmpeg's stderr file, with ``path`` shortened to its name."""
    err.flush()
    err.seek(0, os.SEEK_END)
    size = err.tell()
    err.seek(max(0, size - 4 * STDERR_TAIL))
    text = err.read().decode("utf-8", "replace")
    if path:
        text = text.replace(path, os.path.basename(path))
    return text[-STDERR_TAIL:].strip()


class ProcessScope:
    """The long-running ffmpeg processes (decoders, encoders) one job starts while this scope
    is entered, each in a process group of its own, so that whoever runs the job (an
    executor's replica) can kill them all at once with :meth:`kill`, whatever thread the job
    is blocked in. Entered in the job's thread; the pipeline's background threads inherit it
    (``pipeline.media.background`` copies the context)."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._token: contextvars.Token[ProcessScope | None] | None = None

    def __enter__(self) -> ProcessScope:
        self._token = _scope.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _scope.reset(self._token)

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.append(proc)

    def kill(self) -> list[int]:
        """SIGKILL the process group of every process of the scope still running; their pids."""
        killed = []
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                except (ProcessLookupError, PermissionError):
                    pass  # already gone
        return killed


_scope: contextvars.ContextVar[ProcessScope | None] = contextvars.ContextVar("ffmpeg_scope", default=None)


def popen(cmd: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(cmd, **kw)`` for a long-running ffmpeg; inside a :class:`ProcessScope`
    the process leads a process group of its own and is registered with the scope."""
    scope = _scope.get()
    if scope is not None:
        kw["start_new_session"] = True
    proc = subprocess.Popen(list(cmd), **kw)
    if scope is not None:
        scope.add(proc)
    return proc
