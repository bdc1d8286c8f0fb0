"""probe(): facts parsed from `ffmpeg -i`, and every rejection with its message."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import media
from pipeline.media import probe as probe_mod
from pipeline.errors import InvalidMedia
from pipeline.media.ffmpeg import ffmpeg_exe
from pipeline.media.probe import Limits, probe, validate_audio_input, validate_face_input


def ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def lavfi_video(path: Path, *, size: str = "64x48", seconds: float = 1.0, extra: tuple[str, ...] = ()) -> Path:
    ff("-f", "lavfi", "-i", f"testsrc=s={size}:r=25:d={seconds}", *extra,
       "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path))
    return path


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probe")


def rejects(path: Path, match: str, check=None, **kw) -> str:
    with pytest.raises(InvalidMedia, match=match) as ei:
        info = probe(path)
        (check or validate_face_input)(info, **kw)
    msg = str(ei.value)
    assert msg.startswith(path.name + ":"), msg
    assert str(path.parent) not in msg, "messages must not leak the folder"
    return msg


# ---- rejections ---------------------------------------------------------------------------

def test_missing_file(d: Path) -> None:
    rejects(d / "nope.mp4", "file not found")


def test_empty_file(d: Path) -> None:
    p = d / "empty.mp4"
    p.write_bytes(b"")
    rejects(p, r"the file is empty \(0 bytes\)")


def test_random_bytes(d: Path) -> None:
    p = d / "noise.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    rejects(p, "is not a media file ffmpeg can read")


def test_text_file(d: Path) -> None:
    p = d / "notes.mp4"
    p.write_text("hello, this is not a video\n" * 20)
    rejects(p, r"is not a media file \(it contains text\)")


def test_truncated_mp4_without_moov(d: Path, face_mp4: Path) -> None:
    p = d / "cut.mp4"
    p.write_bytes(face_mp4.read_bytes()[:3000])  # moov is at the end: it is lost
    rejects(p, r"corrupt or truncated \(the MP4 index 'moov' is missing")


def test_no_streams(d: Path) -> None:
    p = d / "nostreams.mp4"
    ff("-f", "lavfi", "-i", "testsrc=s=64x48:r=25:d=1", "-frames:v", "0", "-c:v", "libx264", str(p))
    rejects(p, "contains no audio or video streams")


def test_video_input_with_only_audio(speech_wav: Path) -> None:
    rejects(speech_wav, r"has no video stream \(it contains only audio\)")


def test_audio_input_with_only_video(face_mp4: Path) -> None:
    rejects(face_mp4, r"has no audio stream \(it contains only video\)", check=validate_audio_input)


def test_audio_input_still_image(face_png: Path) -> None:
    rejects(face_png, r"has no audio stream \(it is a still image\)", check=validate_audio_input)


def test_long_side_over_limit(face_mp4: Path, d: Path) -> None:
    rejects(face_mp4, r"the video is 384x384; the longest side may be at most 256 px",
            limits=Limits(max_side=256))
    big = d / "wide.png"
    cv2.imwrite(str(big), np.zeros((8, 4100, 3), np.uint8))
    rejects(big, r"the image is 4100x8; the longest side may be at most 4096 px")


def test_duration_over_limit(face_mp4: Path, speech_wav: Path) -> None:
    rejects(face_mp4, r"lasts 0:02.0; the limit is 0:01.0", limits=Limits(max_duration_s=1.0))
    rejects(speech_wav, r"lasts 0:03.0; the limit is 0:01.0", check=validate_audio_input,
            limits=Limits(max_duration_s=1.0))


def test_header_claiming_ten_hours(d: Path) -> None:
    """A Matroska header whose Duration element says 10 h (the content is 1 s)."""
    p = lavfi_video(d / "ten_hours.mkv")
    b = bytearray(p.read_bytes())
    i = b.find(b"\x44\x89\x88")  # Duration element id, 8-byte float
    assert i > 0
    b[i + 3:i + 11] = struct.pack(">d", 36000 * 1000.0)  # in ms at the default timecode scale
    p.write_bytes(bytes(b))
    assert probe(p).duration_s == pytest.approx(36000)
    rejects(p, r"lasts 10:00:00.0; the limit is 10:00.0")


def test_zero_frame_video(d: Path) -> None:
    p = d / "zero.avi"
    ff("-f", "lavfi", "-i", "testsrc=s=64x48:r=25:d=1", "-frames:v", "0", "-c:v", "mpeg4", str(p))
    rejects(p, r"the video has no frames \(zero duration\)")


def test_zero_length_audio(d: Path) -> None:
    p = media.write_wav(d / "silent0.wav", np.zeros(0, np.float32))
    rejects(p, "has no audio samples", check=validate_audio_input)


def test_probe_timeout(monkeypatch: pytest.MonkeyPatch, face_mp4: Path) -> None:
    """A file that makes ffmpeg hang is cut off at the timeout (a sleeping stand-in here)."""
    monkeypatch.setattr(probe_mod, "base_cmd", lambda: [sys.executable, "-c", "import time; time.sleep(30)"])
    with pytest.raises(InvalidMedia, match=r"face.mp4: reading the file's header took over 0 s"):
        probe(face_mp4, timeout=0.3)


# ---- facts --------------------------------------------------------------------------------

def test_synthetic_video_facts(face_mp4: Path) -> None:
    info = probe(face_mp4)
    validate_face_input(info)
    assert info.container.startswith("mov,mp4")
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert info.size_bytes == face_mp4.stat().st_size
    assert info.video.codec == "h264" and info.video.pix_fmt == "yuv420p"
    assert (info.video.width, info.video.height, info.video.fps) == (384, 384, 25.0)
    assert info.video.rotation == 0 and not info.video.vfr
    assert info.audio is None and not info.is_image
    assert info.to_dict()["video"]["display_size"] == [384, 384]


def test_video_with_audio_facts(d: Path, speech_wav: Path) -> None:
    p = media.face_video(d / "talk.mp4", seconds=1.0, audio=speech_wav)
    info = probe(p)
    validate_face_input(info)
    validate_audio_input(info)
    assert info.audio.codec == "aac" and info.audio.sample_rate == 16000 and info.audio.channels == 1


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "bmp"])
def test_still_image(d: Path, ext: str) -> None:
    p = d / f"photo.{ext}"
    cv2.imwrite(str(p), media.face_frame(0, size=96)[:, :80])
    info = probe(p)
    validate_face_input(info)
    assert info.is_image and (info.container == "image2" or info.container.endswith("_pipe"))
    assert info.video.display_size == (80, 96) and info.duration_s is None


def test_rotation_side_data(d: Path) -> None:
    base = lavfi_video(d / "landscape.mp4")
    p = d / "rotated.mp4"
    ff("-display_rotation", "90", "-i", str(base), "-c", "copy", str(p))
    v = probe(p).video
    assert (v.width, v.height) == (64, 48)
    assert v.rotation == 270  # 90 degrees counter-clockwise
    assert v.display_size == (48, 64)


def test_vfr_detected(d: Path) -> None:
    p = d / "vfr.mp4"
    lavfi_video(p, seconds=2.0, extra=("-vf", r"select=lt(n\,10)+not(mod(n\,4))", "-fps_mode", "vfr"))
    v = probe(p).video
    assert v.vfr
    assert v.fps == pytest.approx(10.2, abs=0.05)  # the average rate, not the 25 tbr


def _stream(line: str, extra: str = "") -> str:
    return (f"Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mp4':\n"
            f"  Duration: 00:00:10.00, start: 0.000000, bitrate: 500 kb/s\n"
            f"  Stream #0:0[0x1](und): Video: {line}\n{extra}"
            "At least one output file must be specified\n")


@pytest.mark.parametrize(("extra", "rotation"), [
    ("    Side data:\n      displaymatrix: rotation of -90.00 degrees\n", 90),
    ("    Side data:\n      Display Matrix: rotation of 180.00 degrees\n", 180),
    ("    Metadata:\n      rotate          : 90\n", 90),
    ("    Metadata:\n      rotate          : 270\n", 270),
])
def test_rotation_parsing(extra: str, rotation: int) -> None:
    text = _stream("h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709), 1920x1080, 30 fps, 30 tbr, 15360 tbn", extra)
    v = probe_mod._parse("x.mp4", 1, text).video
    assert v.rotation == rotation
    assert v.display_size == ((1080, 1920) if rotation in (90, 270) else (1920, 1080))


@pytest.mark.parametrize(("rates", "fps", "vfr"), [
    ("29.97 fps, 29.97 tbr, 30k tbn", 30000 / 1001, False),
    ("23.98 fps, 23.98 tbr, 24k tbn", 24000 / 1001, False),
    ("59.94 tbr, 90k tbn", 60000 / 1001, False),  # tbr only
    ("29.51 fps, 30 tbr, 90k tbn", 29.51, True),
    ("12.5 fps, 12.5 tbr, 12800 tbn", 12.5, False),
])
def test_rate_parsing(rates: str, fps: float, vfr: bool) -> None:
    v = probe_mod._parse("x.mp4", 1, _stream(f"h264 (avc1 / 0x31637661), yuv420p, 640x480 [SAR 1:1 DAR 4:3], {rates}")).video
    assert v.fps == pytest.approx(fps, abs=1e-9) and v.vfr == vfr
    assert (v.width, v.height) == (640, 480)  # not fooled by "0x31637661"


# ---- the shared real media ----------------------------------------------------------------

def test_monalisa(shared_media: Path) -> None:
    info = probe(shared_media / "monalisa_720p.mp4")
    validate_face_input(info)
    validate_audio_input(info)
    v, a = info.video, info.audio
    assert (v.codec, v.width, v.height, v.pix_fmt) == ("h264", 1280, 720, "yuv420p")
    assert v.fps == 30000 / 1001 and not v.vfr and v.rotation == 0
    assert (a.codec, a.sample_rate, a.channels) == ("aac", 16000, 1)
    assert info.duration_s == pytest.approx(14.2, abs=0.05)


def test_hdtf(shared_media: Path) -> None:
    info = probe(shared_media / "hdtf_aoc_512.mp4")
    validate_face_input(info)
    assert (info.video.codec, info.video.width, info.video.height, info.video.fps) == ("mpeg4", 512, 512, 25.0)
    assert info.audio.channels == 2 and info.duration_s == pytest.approx(8.0, abs=0.05)


def test_sun_portrait_has_no_audio(shared_media: Path) -> None:
    info = probe(shared_media / "sun_portrait_noaudio.mp4")
    validate_face_input(info)
    assert info.audio is None and info.video.display_size == (576, 768)
    with pytest.raises(InvalidMedia, match=r"sun_portrait_noaudio.mp4: has no audio stream"):
        validate_audio_input(info)


@pytest.mark.parametrize(("name", "codec", "rate", "channels", "seconds"), [
    ("sun.wav", "pcm_s16le", 44100, 1, 22.49),
    ("speech_en_60s.wav", "pcm_s16le", 16000, 1, 60.0),
    ("radio_stereo_8s.wav", "pcm_s16le", 16000, 2, 8.0),
    ("speech_48k_24bit.wav", "pcm_s24le", 48000, 2, 5.61),
    ("speech_44k.mp3", "mp3", 44100, 1, 4.91),
])
def test_shared_audio_files(shared_media: Path, name: str, codec: str, rate: int, channels: int,
                            seconds: float) -> None:
    info = probe(shared_media / name)
    validate_audio_input(info)
    assert info.video is None and not info.is_image
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == (codec, rate, channels)
    assert info.duration_s == pytest.approx(seconds, abs=0.01)
    with pytest.raises(InvalidMedia, match=rf"{name}: has no video stream \(it contains only audio\)"):
        validate_face_input(info)
