"""read_frames / FrameWriter / frame_plan against the real ffmpeg."""

from __future__ import annotations

import os
import subprocess
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import pytest

import media
from pipeline.errors import FFmpegError, InvalidMedia
from pipeline.media.ffmpeg import ffmpeg_exe
from pipeline.media.probe import probe
from pipeline.media.encode import FrameWriter, video_codec_args
from pipeline.media.decode import count_frames, frame_plan, read_frames


def ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def ffmpeg_children() -> list[psutil.Process]:
    deadline = time.monotonic() + 2.0
    while True:
        kids = [p for p in psutil.Process().children(recursive=True)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and "ffmpeg" in p.name()]
        zombies = [p for p in psutil.Process().children() if p.status() == psutil.STATUS_ZOMBIE]
        if (not kids and not zombies) or time.monotonic() > deadline:
            return kids + zombies
        time.sleep(0.05)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video_io")


def marker_frame(w: int = 64, h: int = 48) -> np.ndarray:
    """Grey frame with a white block in the top-left corner (orientation is visible)."""
    f = np.full((h, w, 3), 60, np.uint8)
    f[: h // 3, : w // 3] = 255
    return f


# ---- read_frames --------------------------------------------------------------------------

def test_read_full_and_scaled(face_mp4: Path) -> None:
    frames = list(read_frames(face_mp4))
    assert len(frames) == 50
    assert frames[0].shape == (384, 384, 3) and frames[0].dtype == np.uint8
    assert diff(frames[0], media.face_frame(0)) < 6  # BGR order, not RGB; x264 loss only
    assert diff(frames[0], media.face_frame(0)[:, :, ::-1]) > 2 * diff(frames[0], media.face_frame(0))
    small = list(read_frames(face_mp4, size=(192, 160)))
    assert len(small) == 50 and small[0].shape == (160, 192, 3)


def test_resample_to_given_fps(face_mp4: Path) -> None:
    assert sum(1 for _ in read_frames(face_mp4, fps=50)) == 100


def test_rotation_applied(d: Path) -> None:
    base = media.write_video(d / "marker.mp4", [marker_frame()] * 5)
    rotated = d / "marker_rot.mp4"
    ff("-display_rotation", "90", "-i", str(base), "-c", "copy", str(rotated))
    info = probe(rotated)
    frames = list(read_frames(rotated, info=info))
    assert info.video.display_size == (48, 64)
    assert frames[0].shape == (64, 48, 3)
    assert diff(frames[0], np.rot90(marker_frame())) < 8  # 90 degrees counter-clockwise
    assert list(read_frames(rotated, size=(24, 32)))[0].shape == (32, 24, 3)


def test_vfr_decodes_to_cfr(d: Path) -> None:
    """A VFR file (dropped frames after the first 10) comes out at constant rate."""
    p = d / "vfr.mp4"
    ff("-f", "lavfi", "-i", "testsrc=s=64x48:r=25:d=2", "-vf", r"select=lt(n\,10)+not(mod(n\,4))",
       "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(p))
    info = probe(p)
    assert info.video.vfr
    n = sum(1 for _ in read_frames(p, info=info))
    assert abs(n - info.duration_s * info.video.fps) <= 1  # CFR at the average rate
    at25 = list(read_frames(p, fps=25))
    assert len(at25) in (49, 50)
    # frames 10..13 of the source were dropped: CFR repeats frame 12's neighbour instead
    assert diff(at25[10], at25[11]) == 0 or diff(at25[11], at25[12]) == 0


def test_still_image_yields_one_frame(face_png: Path) -> None:
    frames = list(read_frames(face_png))
    assert len(frames) == 1
    assert np.array_equal(frames[0], media.face_frame(0))  # lossless png


def test_audio_only_input_rejected(speech_wav: Path) -> None:
    with pytest.raises(InvalidMedia, match="speech.wav: has no video stream"):
        read_frames(speech_wav)


def test_ffmpeg_failure_surfaces_stderr(d: Path, face_mp4: Path) -> None:
    p = d / "gone.mp4"
    p.write_bytes(face_mp4.read_bytes())
    info = probe(p)
    p.unlink()
    with pytest.raises(FFmpegError, match=r"decoding gone.mp4 failed \(ffmpeg exit \d+\): .*No such file") as ei:
        list(read_frames(p, info=info))
    assert str(d) not in str(ei.value)


def test_early_break_leaves_no_ffmpeg(face_mp4: Path) -> None:
    for _ in read_frames(face_mp4):
        break
    assert ffmpeg_children() == []
    gen = read_frames(face_mp4)
    next(gen)
    next(gen)
    gen.close()
    assert ffmpeg_children() == []


def test_memory_does_not_grow_with_length(d: Path) -> None:
    p = d / "long.mp4"
    ff("-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=12", "-c:v", "libx264", "-preset", "ultrafast",
       "-pix_fmt", "yuv420p", str(p))
    frame_bytes = 320 * 240 * 3
    tracemalloc.start()
    try:
        n = 0
        for _ in read_frames(p):
            n += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 300
    assert peak < 8 * frame_bytes, f"peak {peak} bytes for {n} frames"
    assert ffmpeg_children() == []


def test_count_frames_matches_read_frames(d: Path, face_mp4: Path, face_png: Path) -> None:
    assert count_frames(face_mp4) == 50
    assert count_frames(face_mp4, fps=50) == 100 == sum(1 for _ in read_frames(face_mp4, fps=50))
    assert count_frames(face_png) == 1
    p = d / "vfr_count.mp4"
    ff("-f", "lavfi", "-i", "testsrc=s=64x48:r=25:d=2", "-vf", r"select=lt(n\,10)+not(mod(n\,4))",
       "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(p))
    info = probe(p)
    assert info.video.vfr
    assert count_frames(p, info=info) == sum(1 for _ in read_frames(p, info=info))


@pytest.mark.parametrize(("name", "frames", "size"), [
    ("hdtf_aoc_512.mp4", 200, (512, 512)),
    ("monalisa_720p.mp4", 422, (1280, 720)),  # the container's 14.22 s would promise 426
    ("sun_portrait_noaudio.mp4", 550, (576, 768)),
])
def test_shared_videos_decode(shared_media: Path, name: str, frames: int, size: tuple[int, int]) -> None:
    path = shared_media / name
    info = probe(path)
    assert count_frames(path, info=info) == frames
    w, h = size
    first = next(iter(read_frames(path, info=info)))
    assert first.shape == (h, w, 3) and first.std() > 10  # a picture, not a blank
    if name == "monalisa_720p.mp4":  # the one where the container's duration over-promises
        assert sum(1 for _ in read_frames(path, size=(w // 8, h // 8), info=info)) == frames


# ---- FrameWriter --------------------------------------------------------------------------

def test_write_roundtrip(d: Path) -> None:
    frames = [media.face_frame(i, size=128) for i in range(20)]
    out = d / "rt.mp4"
    with FrameWriter(out, 128, 128, 30000 / 1001) as w:
        for f in frames:
            w.write(f)
    info = probe(out)
    assert info.video.codec == "h264" and info.video.pix_fmt == "yuv420p"
    assert info.video.fps == 30000 / 1001 and info.audio is None
    back = list(read_frames(out))
    assert len(back) == 20 and diff(back[7], frames[7]) < 4
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart


def test_odd_size_is_evened(d: Path) -> None:
    out = d / "odd.mp4"
    with FrameWriter(out, 65, 49, 25) as w:
        assert w.out_size == (64, 48)
        for _ in range(5):
            w.write(marker_frame(65, 49))
    assert probe(out).video.display_size == (64, 48)


def test_audio_muxed_whole(d: Path, speech_wav: Path) -> None:
    """The audio is kept whole (3 s) with every frame (2 s of video): the run loop writes as
    many frames as the audio lasts, so it need not know that length when it starts the encoder."""
    from pipeline.media.audio import SAMPLE_RATE, load_audio

    out = d / "whole_audio.mp4"
    with FrameWriter(out, 64, 48, 25, audio_path=speech_wav) as w:
        for _ in range(50):
            w.write(marker_frame())
    assert w.frames_written == 50
    info = probe(out)
    assert info.audio.codec == "aac" and info.audio.sample_rate == 16000
    assert count_frames(out) == 50
    assert abs(len(load_audio(out)) - 3 * SAMPLE_RATE) <= 1024 + 64  # within one AAC frame
    assert info.duration_s == pytest.approx(3.0, abs=0.1)



def test_encoder_failure_raises_ffmpeg_error(d: Path) -> None:
    out = d / "bad.mp4"
    with pytest.raises(FFmpegError, match="encoding bad.mp4 failed.*invalid preset"):
        with FrameWriter(out, 64, 48, 25, preset="no-such-preset") as w:
            for _ in range(200):
                w.write(marker_frame())
    assert not out.exists()
    assert ffmpeg_children() == []


def test_close_raises_with_stderr(d: Path) -> None:
    w = FrameWriter(d / "bad2.mp4", 64, 48, 25, preset="no-such-preset")
    with pytest.raises(FFmpegError, match="invalid preset"):
        w.write(marker_frame())
        w.close()


def test_exception_in_block_kills_and_removes(d: Path) -> None:
    out = d / "aborted.mp4"
    with pytest.raises(RuntimeError):
        with FrameWriter(out, 64, 48, 25) as w:
            w.write(marker_frame())
            raise RuntimeError("boom")
    assert not out.exists() and ffmpeg_children() == []


def test_wrong_frame_shape(d: Path) -> None:
    w = FrameWriter(d / "shape.mp4", 64, 48, 25)
    try:
        with pytest.raises(ValueError, match=r"expected a \(48, 64, 3\) uint8 frame"):
            w.write(np.zeros((64, 48, 3), np.uint8))
    finally:
        w.abort()


def test_encoder_args() -> None:
    assert video_codec_args("libx264", preset="veryfast", crf=18) == [
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "18"]
    nv = video_codec_args("h264_nvenc", preset="veryfast", crf=20)
    assert nv[:4] == ["-c:v", "h264_nvenc", "-preset", "p2"] and "-cq" in nv
    with pytest.raises(ValueError, match="unknown encoder"):
        video_codec_args("x265", preset="veryfast", crf=18)


@pytest.mark.skipif(not os.path.exists("/dev/nvidia0"), reason="needs an NVIDIA GPU for NVENC")
def test_nvenc_encode(d: Path) -> None:
    out = d / "nvenc.mp4"
    with FrameWriter(out, 256, 256, 25, encoder="h264_nvenc") as w:
        for i in range(25):
            w.write(media.face_frame(i, size=256))
    assert probe(out).video.codec == "h264"


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="an NVIDIA GPU is present: test_nvenc_encode runs")
def test_nvenc_without_gpu_fails_with_ffmpeg_stderr(d: Path) -> None:
    """h264_nvenc is an accepted encoder name; without a GPU ffmpeg's own reason surfaces."""
    out = d / "nvenc_nogpu.mp4"
    with pytest.raises(FFmpegError, match=r"encoding nvenc_nogpu.mp4 failed.*(libcuda|nvenc|NVENC|CUDA)"):
        with FrameWriter(out, 64, 48, 25, encoder="h264_nvenc") as w:
            for _ in range(30):
                w.write(marker_frame())
    assert not out.exists() and ffmpeg_children() == []


# ---- frame_plan ---------------------------------------------------------------------------

def test_frame_plan() -> None:
    assert frame_plan(4, 12).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert frame_plan(4, 9, "loop").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert frame_plan(2, 5).tolist() == [0, 1, 0, 1, 0]
    assert frame_plan(5, 3).tolist() == [0, 1, 2]
    assert frame_plan(5, 0).tolist() == []
    assert frame_plan(1, 4).tolist() == [0, 0, 0, 0]
    plan = frame_plan(7, 1000)
    assert plan.min() == 0 and plan.max() == 6 and (np.abs(np.diff(plan)) == 1).all()
    with pytest.raises(ValueError):
        frame_plan(0, 3)
    with pytest.raises(ValueError):
        frame_plan(3, 5, "bounce")
