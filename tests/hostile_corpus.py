"""The hostile / edge input corpus of issue 7, generated into a tmp folder with real ffmpeg.

:func:`plan_corpus` declares every case as a :class:`Case` record (the face input, the speech
input, and the expected outcome: a correct output (``expect_ok``, with an optional check of the
probed result) or a named error whose message contains ``words``) and queues the writes that
make its files, without running them: tests parametrize over the plan at collection time.
:func:`build_corpus` plans and then writes the files. Media are tiny (<= 1-2 s, small frames)
so the whole corpus runs in a couple of minutes. A case whose encoder is missing from the
ffmpeg build has ``skip`` set and no files.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.io import wavfile

import media
from pipeline.media.ffmpeg import ffmpeg_exe

SR = 16000
SIDE = 256  # px: big enough for dlib to find the face, small enough to be quick
TEN_HOURS_S = 36000


@dataclass(frozen=True)
class Case:
    name: str
    video: Path
    audio: Path
    expect_ok: bool
    error_type: str | None = None  # the exception class named in the AppError message
    words: tuple[str, ...] = ()  # words the error message must contain (case-insensitive)
    options: str = "{}"
    check: Callable[[Any, dict[str, Any]], None] | None = None  # (probe of the result, job record)
    skip: str | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def encoders() -> set[str]:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[1] for line in out.splitlines()[10:] if len(line.split()) > 1}


def _ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def faces(n: int, *, side: int = SIDE) -> list[np.ndarray]:
    return [media.face_frame(i, size=side) for i in range(n)]


def ramp(n: int, *, side: int = SIDE) -> list[np.ndarray]:
    """Frames with no face: a horizontal grey ramp scrolling sideways."""
    row = np.linspace(40, 200, side, dtype=np.uint8)
    img = np.tile(row[None, :, None], (side, 1, 3))  # (side, side, 3)
    return [np.roll(img, 3 * i, axis=1) for i in range(n)]


def _speech(path: Path, seconds: float, *, sr: int = SR) -> Path:
    return media.write_wav(path, media.speech_like(seconds, sr=sr), sr=sr)


def _patch_mkv_duration(path: Path, seconds: float) -> None:
    """Rewrite the Matroska Segment Info Duration (EBML id 0x4489, a float in ms) in place."""
    data = bytearray(path.read_bytes())
    i = data.find(bytes([0x44, 0x89]))
    size = data[i + 2] & 0x0F  # 0x88 (8-byte double) or 0x84 (4-byte float)
    data[i + 3:i + 3 + size] = struct.pack(">d" if size == 8 else ">f", seconds * 1000.0)
    path.write_bytes(bytes(data))


def _x264(pix_fmt: str = "yuv420p") -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix_fmt]


def _ok_size(w: int, h: int, *, tol: int = 1) -> Callable[[Any, dict[str, Any]], None]:
    def check(info: Any, job: dict[str, Any]) -> None:
        got = info.video.display_size
        if abs(got[0] - w) > tol or abs(got[1] - h) > tol:
            raise AssertionError(f"output is {got[0]}x{got[1]}, expected about {w}x{h}")
    return check


def _duration(seconds: float, *, tol: float = 0.15) -> Callable[[Any, dict[str, Any]], None]:
    def check(info: Any, job: dict[str, Any]) -> None:
        if abs(info.duration_s - seconds) > tol:
            raise AssertionError(f"output lasts {info.duration_s:.2f} s, expected {seconds:.2f} s")
    return check


def _some_frames_without_face(info: Any, job: dict[str, Any]) -> None:
    missing, frames = job["facts"]["frames_without_face"], job["facts"]["frames"]
    if not 0 < missing < frames:
        raise AssertionError(f"expected some but not all frames without a face, got {missing}/{frames}")


class Corpus:
    """The planned cases under ``d`` and the queued writes that make their files."""

    def __init__(self, d: Path, have: set[str]) -> None:
        self.d, self.have = d, have
        self.cases: list[Case] = []
        self.writes: list[Callable[[], object]] = []
        self.speech = d / "speech_1s.wav"  # the default inputs of every case
        self.face = d / "face_1s.mp4"
        self.later(lambda: _speech(self.speech, 1.0))
        self.later(lambda: media.write_video(self.face, faces(25)))

    def later(self, write: Callable[[], object]) -> None:
        """Queue one write; :meth:`write` runs them in order (later ones may read earlier files)."""
        self.writes.append(write)

    def ok(self, name: str, video: Path, audio: Path | None = None, **kw: Any) -> None:
        self.cases.append(Case(name=name, video=video, audio=audio or self.speech, expect_ok=True, **kw))

    def err(self, name: str, error_type: str, *words: str, video: Path | None = None,
            audio: Path | None = None, **kw: Any) -> None:
        self.cases.append(Case(name=name, video=video or self.face, audio=audio or self.speech,
                               expect_ok=False, error_type=error_type, words=words, **kw))

    def need(self, *names: str) -> str | None:
        """The skip reason when the ffmpeg build lacks one of these encoders, else None."""
        missing = [n for n in names if n not in self.have]
        return f"ffmpeg build lacks encoder(s) {', '.join(missing)}" if missing else None

    def write(self) -> None:
        self.d.mkdir(parents=True, exist_ok=True)
        for write in self.writes:
            write()


def _not_media(c: Corpus) -> None:
    d = c.d
    c.later(lambda: (d / "empty.mp4").write_bytes(b""))
    c.err("empty file", "InvalidMedia", "empty.mp4", "empty", video=d / "empty.mp4")
    c.later(lambda: (d / "random.mp4").write_bytes(np.random.default_rng(7).bytes(64 * 1024)))
    c.err("random bytes named .mp4", "InvalidMedia", "random.mp4", video=d / "random.mp4")
    c.later(lambda: (d / "notes.mp4").write_text("this is a text file, not a video\n" * 20))
    c.err("text file", "InvalidMedia", "notes.mp4", video=d / "notes.mp4")

    def truncated() -> None:
        data = media.write_video(d / "full.mp4", faces(25)).read_bytes()  # moov at the end (no faststart)
        (d / "truncated.mp4").write_bytes(data[: len(data) // 2])

    c.later(truncated)
    c.err("truncated MP4 (moov missing)", "InvalidMedia", "truncated.mp4", video=d / "truncated.mp4")


def _degenerate_streams(c: Corpus) -> None:
    d = c.d
    c.later(lambda: _ff("-i", os.fspath(c.speech), "-c:a", "aac", os.fspath(d / "audio_only.mp4")))
    c.err("video input with only an audio stream", "InvalidMedia", "audio_only.mp4", "only audio",
          video=d / "audio_only.mp4")
    c.err("audio input with only a video stream", "InvalidMedia", "face_1s.mp4", "only video", audio=c.face)
    c.later(lambda: _ff("-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25", "-frames:v", "0", *_x264(),
                        os.fspath(d / "zero_frames.mp4")))
    c.err("zero-duration video", "InvalidMedia", "zero_frames.mp4", video=d / "zero_frames.mp4")
    c.later(lambda: media.write_video(d / "tiny_1x1.mp4", [np.full((1, 1, 3), 128, np.uint8)] * 10,
                                      extra=_x264("yuv444p")))
    c.err("1x1 video", "InvalidMedia", "tiny_1x1.mp4", "1x1", "at least 2x2", video=d / "tiny_1x1.mp4")
    c.later(lambda: cv2.imwrite(os.fspath(d / "huge_8000.png"), np.zeros((8000, 8000, 3), np.uint8)))
    c.err("8000x8000 still image", "InvalidMedia", "8000x8000", video=d / "huge_8000.png")
    long_claim = d / "ten_hours.mkv"
    c.later(lambda: media.write_video(long_claim, faces(25)))
    c.later(lambda: _patch_mkv_duration(long_claim, TEN_HOURS_S))  # 1 s of frames, 10 h in the header
    c.err("10-hour duration claim in the header", "InvalidMedia", "ten_hours.mkv", "10:00:00", "limit",
          video=long_claim, note="Matroska Duration patched to 36000 s (ffmpeg ignores patched MP4 mvhd)")


def _unusual_video(c: Corpus) -> None:
    """Unusual but valid video encoded by libx264: each must give a correct output."""
    d = c.d
    odd = d / "odd_255x253.mp4"
    c.later(lambda: media.write_video(odd, [f[:, :SIDE - 1][:SIDE - 3] for f in faces(25)],  # (253, 255, 3)
                                      extra=_x264("yuv444p")))
    c.ok("odd width/height 255x253", odd, check=_ok_size(255, 253))
    # coded sideways (the upright 192x256 face turned clockwise: 256 wide, 192 high); the
    # display matrix turns it 90 degrees counter-clockwise back upright: displayed 192x256
    c.later(lambda: media.write_video(d / "tall.mp4", [cv2.rotate(f[:, 32:SIDE - 32], cv2.ROTATE_90_CLOCKWISE)
                                                       for f in faces(25)]))  # (192, 256, 3)
    c.later(lambda: _ff("-display_rotation", "90", "-i", os.fspath(d / "tall.mp4"), "-c", "copy",
                        os.fspath(d / "rotated90.mp4")))
    c.ok("90-degree rotation metadata", d / "rotated90.mp4", check=_ok_size(192, 256),
         note="display 192x256 from coded 256x192")
    c.later(lambda: media.write_video(d / "vfr.mp4", faces(30), extra=[
        "-vf", "setpts=(N+floor(N/2))/(25*TB)", "-fps_mode", "passthrough", *_x264()]))
    c.ok("variable frame rate", d / "vfr.mp4", check=_duration(1.0))
    c.later(lambda: media.write_video(d / "fps120.mp4", faces(60), fps=120))
    c.ok("120 fps", d / "fps120.mp4", check=_duration(1.0))
    c.later(lambda: media.write_video(d / "tenbit.mp4", faces(25), extra=_x264("yuv420p10le")))
    c.ok("10-bit video", d / "tenbit.mp4", check=_ok_size(SIDE, SIDE))
    c.later(lambda: media.write_video(d / "yuv444.mp4", faces(25), extra=_x264("yuv444p")))
    c.ok("yuv444 video", d / "yuv444.mp4", check=_ok_size(SIDE, SIDE))


def _other_codecs(c: Corpus) -> None:
    """HEVC, VP9/Opus and MJPEG inputs: skipped where the ffmpeg build cannot encode them."""
    d = c.d
    skip = c.need("libx265")
    if not skip:
        c.later(lambda: media.write_video(d / "hevc.mp4", faces(25), extra=[
            "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
            "-pix_fmt", "yuv420p", "-tag:v", "hvc1"]))
    c.ok("HEVC input", d / "hevc.mp4", check=_ok_size(SIDE, SIDE), skip=skip)
    skip = c.need("libvpx-vp9", "libopus")
    if not skip:
        c.later(lambda: media.write_video(d / "vp9.webm", faces(25), audio=None, extra=[
            "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"]))
        c.later(lambda: _ff("-i", os.fspath(c.speech), "-c:a", "libopus", os.fspath(d / "speech.webm")))
    c.ok("VP9/WebM input (and Opus/WebM speech)", d / "vp9.webm", d / "speech.webm",
         check=_ok_size(SIDE, SIDE), skip=skip)
    skip = c.need("mjpeg")
    if not skip:
        c.later(lambda: media.write_video(d / "mjpeg.avi", faces(25), extra=[
            "-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj420p"]))
    c.ok("MJPEG/AVI input", d / "mjpeg.avi", check=_ok_size(SIDE, SIDE), skip=skip)


def _faces(c: Corpus) -> None:
    d = c.d
    c.later(lambda: media.write_video(d / "no_face.mp4", ramp(25)))
    c.err("no face anywhere", "NoFaceFound", "face", video=d / "no_face.mp4")
    c.later(lambda: media.write_video(d / "some_faces.mp4", faces(13) + ramp(12)))
    c.ok("faces in only some frames", d / "some_faces.mp4", check=_some_frames_without_face)
    c.later(lambda: media.write_video(d / "two_faces.mp4", [np.concatenate([f, f[:, ::-1]], axis=1)
                                                            for f in faces(25)]))  # (256, 512, 3)
    c.ok("two faces (face_index 1)", d / "two_faces.mp4", options='{"face_index": 1}',
         check=_ok_size(2 * SIDE, SIDE))


def _square_wave() -> np.ndarray:
    t = np.arange(SR) / SR
    return (np.sign(np.sin(2 * np.pi * 220 * t)) * 4.0).astype(np.float32)  # clipped far past full scale


def _nan_wav(path: Path) -> None:
    nan = media.speech_like(1.0)
    nan[::50] = np.nan
    nan[1::97] = np.inf
    wavfile.write(os.fspath(path), SR, nan.astype(np.float32))  # IEEE float WAV with NaN/inf


def _audio(c: Corpus) -> None:
    d, face = c.d, c.face
    c.later(lambda: _ff("-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", "1", "-c:a", "aac",
                        os.fspath(d / "silent.m4a")))
    c.ok("silent audio (AAC digital silence)", face, d / "silent.m4a", check=_duration(1.0))
    c.later(lambda: _speech(d / "speech_8k.wav", 1.0, sr=8000))
    c.ok("8 kHz mono audio", face, d / "speech_8k.wav", check=_duration(1.0))
    c.later(lambda: media.write_video(d / "face_0.5s.mp4", faces(13)))
    c.later(lambda: _speech(d / "speech_10s.wav", 10.0))
    c.ok("audio 20x longer than the video (0.5 s / 10 s)", d / "face_0.5s.mp4", d / "speech_10s.wav",
         check=_duration(10.0))
    c.later(lambda: media.write_wav(d / "zeros.wav", np.zeros(SR, np.float32)))
    c.ok("all-zero PCM audio", face, d / "zeros.wav", check=_duration(1.0))
    c.later(lambda: media.write_wav(d / "square.wav", _square_wave()))
    c.ok("clipped square wave", face, d / "square.wav", check=_duration(1.0))
    c.later(lambda: _nan_wav(d / "nan_float.wav"))
    c.err("float WAV with NaN and inf samples", "InvalidMedia", "nan_float.wav", "NaN", audio=d / "nan_float.wav")


def _names(c: Corpus) -> None:
    weird = c.d / "..%2F..%2Fetc%2Fpasswd \"q\" 'x' ñandú 顔 ..mp4"
    c.later(lambda: weird.write_bytes(c.face.read_bytes()))
    c.ok("file name with path traversal, quotes and non-ASCII", weird, check=_duration(1.0))


GROUPS = (_not_media, _degenerate_streams, _unusual_video, _other_codecs, _faces, _audio, _names)


def plan_corpus(d: Path, have: set[str] | None = None) -> Corpus:
    """Every case under ``d``, its files not yet written; ``have``: the ffmpeg encoders (probed)."""
    corpus = Corpus(d, encoders() if have is None else have)
    for group in GROUPS:
        group(corpus)
    return corpus


def build_corpus(d: Path) -> list[Case]:
    """Plan every case and write its files into ``d``."""
    corpus = plan_corpus(d)
    corpus.write()
    return corpus.cases
