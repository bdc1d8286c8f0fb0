"""Probing and validating media inputs.

There is no ffprobe, so ``probe`` parses what ``ffmpeg -hide_banner -i FILE`` prints on
stderr: the demuxer, the duration, and one line per stream (plus side data such as the
display matrix). Everything a later stage needs to know about an input comes from here.

``probe`` raises ``InvalidMedia`` for files that cannot be media at all (missing, empty,
not media, corrupt, no streams). ``validate_face_input`` / ``validate_audio_input`` then
check what a job needs (the right stream, a non-zero duration, the size and length
limits). Every message names the file's basename only, never a temporary path.

Variable frame rate detection is a cheap heuristic: ffmpeg prints the average rate
(``fps``) and its guess of the base rate (``tbr``); when both are present and differ by
more than 1 %, the stream is marked ``vfr``. Decoding always produces constant-rate
frames for such streams (see ``pipeline.media.decode.read_frames``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from pipeline.errors import InvalidMedia
from pipeline.media.ffmpeg import base_cmd, input_args

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 30.0  # a hostile file must not hang the probe
VFR_TOLERANCE = 0.01  # relative fps-vs-tbr mismatch above which a stream counts as VFR
NTSC_TOLERANCE = 0.006  # ffmpeg prints rates with 2 decimals: 29.97 -> 30000/1001
MIN_FPS = 1.0  # below this a "video" is a slideshow or a broken header
MIN_SIDE = 2  # px: the output is yuv420p (2x2 pixel blocks), cropped to even sides
IMAGE_DEMUXERS = ("image2",)  # plus every "*_pipe" image demuxer (png_pipe, jpeg_pipe, ...)

_CHANNEL_LAYOUTS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "quad": 4,
                    "quad(side)": 4, "4.0": 4, "4.1": 5, "5.0": 5, "5.0(side)": 5, "5.1": 6,
                    "5.1(side)": 6, "6.1": 7, "7.1": 8, "7.1(wide)": 8, "downmix": 2}

_INPUT_RE = re.compile(r"^Input #0, (?P<fmt>[^\s]+), from ", re.M)
_DURATION_RE = re.compile(r"Duration: (?:(?P<h>\d+):(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)|N/A)")
_STREAM_RE = re.compile(r"^\s*Stream #0:(?P<idx>\d+)\S*: (?P<kind>Video|Audio|Subtitle|Data|Attachment): "
                        r"(?P<rest>.*)$")
_DISPLAYMATRIX_RE = re.compile(r"display ?matrix: rotation of (?P<deg>-?\d+(?:\.\d+)?) degrees", re.I)
_ROTATE_TAG_RE = re.compile(r"^\s*rotate\s*:\s*(?P<deg>-?\d+(?:\.\d+)?)\s*$", re.M)
_RATE_RE = re.compile(r"(?P<num>\d+(?:\.\d+)?)(?P<k>k?) (?P<unit>fps|tbr)\b")


@dataclass(frozen=True)
class VideoStream:
    codec: str
    width: int  # coded size, before rotation
    height: int
    fps: float  # average rate; 29.97 is stored as 30000/1001
    pix_fmt: str
    rotation: int  # clockwise degrees to display upright: 0, 90, 180 or 270
    vfr: bool  # heuristic: ffmpeg's fps and tbr disagree by more than VFR_TOLERANCE

    @property
    def display_size(self) -> tuple[int, int]:
        """(w, h) of frames as shown (and as ``read_frames`` yields them)."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class AudioStream:
    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class MediaInfo:
    path: str
    container: str  # ffmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "png_pipe"
    duration_s: float | None  # None where ffmpeg reports N/A (still images, broken files)
    size_bytes: int
    video: VideoStream | None
    audio: AudioStream | None
    is_image: bool

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.video is not None:
            d["video"]["display_size"] = list(self.video.display_size)
        return d


@dataclass(frozen=True)
class Limits:
    max_side: int = 4096  # px, longest side of the displayed frame
    max_duration_s: float = 600.0
    max_fps: float = 240.0


def probe(path: str | os.PathLike[str], *, timeout: float = PROBE_TIMEOUT_S) -> MediaInfo:
    """Facts about a media file from ``ffmpeg -i``; raises InvalidMedia where it is not media."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise InvalidMedia(f"{name}: file not found")
    size = os.path.getsize(path)
    if size == 0:
        raise InvalidMedia(f"{name}: the file is empty (0 bytes)")
    cmd = [*base_cmd(), *input_args(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InvalidMedia(f"{name}: reading the file's header took over {timeout:.0f} s; "
                           "the file looks malformed") from exc
    text = proc.stderr.decode("utf-8", "replace").replace(path, name)
    if not _INPUT_RE.search(text):
        raise InvalidMedia(_explain_open_failure(path, text))
    info = _parse(path, size, text)
    log.debug("probe %s: %s", name, info)
    return info


def require_stream(info: MediaInfo, kind: str) -> None:
    """Raise InvalidMedia unless ``info`` has a ``kind`` ("video" or "audio") stream."""
    if kind == "video" and info.video is None:
        what = "it contains only audio" if info.audio is not None else "it contains no video"
    elif kind == "audio" and info.audio is None:
        what = "it is a still image" if info.is_image else (
            "it contains only video" if info.video is not None else "it contains no audio")
    elif kind in ("video", "audio"):
        return
    else:
        raise ValueError(f"unknown stream kind {kind!r} (use 'video' or 'audio')")
    raise InvalidMedia(f"{info.name}: has no {kind} stream ({what})")


def validate_face_input(info: MediaInfo, limits: Limits = Limits()) -> None:
    """Check that ``info`` is a usable face video or still photo; raises InvalidMedia."""
    name = info.name
    require_stream(info, "video")
    v = info.video
    if not info.is_image and (not info.duration_s or info.duration_s <= 0):
        raise InvalidMedia(f"{name}: the video has no frames (zero duration)")
    if v.width <= 0 or v.height <= 0 or v.pix_fmt == "none":
        raise InvalidMedia(f"{name}: the video stream cannot be decoded (unknown frame size or pixel format)")
    _check_side(info, limits)
    if info.is_image:
        return
    if not MIN_FPS <= v.fps <= limits.max_fps:
        raise InvalidMedia(f"{name}: implausible frame rate {v.fps:.4g} fps "
                           f"(supported: {MIN_FPS:g} to {limits.max_fps:g} fps)")
    _check_duration(info, limits)


def validate_audio_input(info: MediaInfo, limits: Limits = Limits()) -> None:
    """Check that ``info`` has a usable audio stream within the limits; raises InvalidMedia."""
    name = info.name
    require_stream(info, "audio")
    if not info.duration_s or info.duration_s <= 0:
        raise InvalidMedia(f"{name}: has no audio samples (zero duration)")
    _check_duration(info, limits)


def _check_side(info: MediaInfo, limits: Limits) -> None:
    w, h = info.video.display_size
    kind = "image" if info.is_image else "video"
    if min(w, h) < MIN_SIDE:
        raise InvalidMedia(f"{info.name}: the {kind} is {w}x{h}; it must be at least {MIN_SIDE}x{MIN_SIDE} px "
                           "(the output is H.264 in 2x2 pixel blocks)")
    if max(w, h) > limits.max_side:
        raise InvalidMedia(f"{info.name}: the {kind} is {w}x{h}; the longest side may be at most "
                           f"{limits.max_side} px (scale it down first)")


def _check_duration(info: MediaInfo, limits: Limits) -> None:
    if info.duration_s > limits.max_duration_s:
        raise InvalidMedia(f"{info.name}: lasts {_hms(info.duration_s)}; the limit is "
                           f"{_hms(limits.max_duration_s)} (trim it first)")


def _hms(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:04.1f}" if h else f"{m}:{s:04.1f}"


def _explain_open_failure(path: str, text: str) -> str:
    name = os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    low = text.lower()
    if "not on the format whitelist" in low or "not on the protocol whitelist" in low:
        return f"{name}: this file type is not accepted (unsupported container)"
    if "moov atom not found" in low and head[4:8] == b"ftyp":
        return (f"{name}: the file is corrupt or truncated (the MP4 index 'moov' is missing; "
                "was the upload cut short?)")
    if "end of file" in low or "truncat" in low:
        return f"{name}: the file is corrupt or truncated"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").upper().startswith((b"#EXTM3U", b"FFCONCAT")):
        return f"{name}: is a playlist, not a media file (playlists are not accepted; upload the media itself)"
    if _looks_like_text(head):
        return f"{name}: is not a media file (it contains text)"
    if "invalid data found" in low:
        return f"{name}: is not a media file ffmpeg can read (unknown or corrupt format)"
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-1:] or ["no output"]
    return f"{name}: could not be read as media ({tail[0][-200:]})"


def _looks_like_text(head: bytes) -> bool:
    try:
        s = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in s)


def _parse(path: str, size: int, text: str) -> MediaInfo:
    fmt = _INPUT_RE.search(text).group("fmt").rstrip(",")
    m = _DURATION_RE.search(text)
    duration = None
    if m and m.group("h") is not None:
        duration = int(m.group("h")) * 3600 + int(m.group("m")) * 60 + float(m.group("s"))
    video = audio = None
    blocks = _stream_blocks(text)
    for kind, rest, block in blocks:
        if kind == "Video" and video is None and "(attached pic)" not in rest:
            video = _parse_video(rest, block)
        elif kind == "Audio" and audio is None:
            audio = _parse_audio(rest)
    if video is None and audio is None:
        raise InvalidMedia(f"{os.path.basename(path)}: contains no audio or video streams")
    is_image = video is not None and (fmt in IMAGE_DEMUXERS or fmt.endswith("_pipe"))
    return MediaInfo(path=path, container=fmt, duration_s=None if is_image else duration,
                     size_bytes=size, video=video, audio=audio, is_image=is_image)


def _stream_blocks(text: str) -> list[tuple[str, str, str]]:
    """(kind, rest of the stream line, indented lines below it) for each stream of input 0."""
    out: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        m = _STREAM_RE.match(line)
        if m:
            out.append((m.group("kind"), m.group("rest"), []))
        elif out and line.startswith("      "):
            out[-1][2].append(line)
        elif out and not line.startswith(" "):
            break  # end of the input dump
    return [(k, r, "\n".join(b)) for k, r, b in out]


def _split_top(rest: str) -> list[str]:
    """Split a stream description at commas outside parentheses/brackets."""
    parts, depth, cur = [], 0, []
    for ch in rest:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _parse_video(rest: str, block: str) -> VideoStream:
    parts = _split_top(rest)
    codec = parts[0].split()[0] if parts[0] else "unknown"
    pix_fmt = parts[1].split("(")[0].strip() if len(parts) > 1 else "none"
    width = height = 0
    for p in parts[1:]:
        m = re.match(r"(\d+)x(\d+)\b", p)
        if m:
            width, height = int(m.group(1)), int(m.group(2))
            if p is parts[1]:
                pix_fmt = "none"  # no pixel format printed before the size
            break
    rates = {m.group("unit"): float(m.group("num")) * (1000 if m.group("k") else 1)
             for m in _RATE_RE.finditer(rest)}
    fps, tbr = rates.get("fps"), rates.get("tbr")
    vfr = bool(fps and tbr and abs(fps - tbr) > VFR_TOLERANCE * tbr)
    rate = fps or tbr or 0.0
    return VideoStream(codec=codec, width=width, height=height, fps=_snap_rate(rate),
                       pix_fmt=pix_fmt, rotation=_rotation(block), vfr=vfr)


def _snap_rate(rate: float) -> float:
    """29.97 -> 30000/1001, 23.98 -> 24000/1001, ...; other rates unchanged."""
    if rate <= 0 or abs(rate - round(rate)) < 1e-9:
        return rate
    n = round(rate * 1.001)
    if n and abs(n * 1000 / 1001 - rate) < NTSC_TOLERANCE:
        return n * 1000 / 1001
    return rate


def _rotation(block: str) -> int:
    """Clockwise rotation (the old ``rotate`` tag's convention) from side data or the tag."""
    m = _DISPLAYMATRIX_RE.search(block)
    if m:
        deg = -float(m.group("deg"))  # the display matrix angle is counter-clockwise
    else:
        m = _ROTATE_TAG_RE.search(block)
        deg = float(m.group("deg")) if m else 0.0
    return int(round(deg / 90.0)) * 90 % 360


def _parse_audio(rest: str) -> AudioStream:
    parts = _split_top(rest)
    codec = parts[0].split()[0] if parts[0] else "unknown"
    sample_rate, channels = 0, 0
    for p in parts[1:]:
        m = re.fullmatch(r"(\d+) Hz", p)
        if m:
            sample_rate = int(m.group(1))
            continue
        m = re.fullmatch(r"(\d+) channels.*", p)
        if m:
            channels = int(m.group(1))
        elif p in _CHANNEL_LAYOUTS:
            channels = _CHANNEL_LAYOUTS[p]
        elif channels == 0 and (m := re.fullmatch(r"(\d+)\.(\d+)(\(\w+\))?", p)):
            channels = int(m.group(1)) + int(m.group(2))
    return AudioStream(codec=codec, sample_rate=sample_rate, channels=channels)
