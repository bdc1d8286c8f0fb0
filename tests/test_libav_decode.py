"""In-process decoding (pipeline.media.libav) against the ffmpeg pipe's frames, real files."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import psutil
import pytest

from pipeline.media import libav
from pipeline.errors import InvalidMedia
from pipeline.media.ffmpeg import ffmpeg_exe
from pipeline.media.probe import probe
from pipeline.media.decode import read_frames


def ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("libav_decode")


def clip(path: Path, *extra: str, size: str = "96x64", rate: str = "25", seconds: float = 2) -> Path:
    ff("-f", "lavfi", "-i", f"testsrc=s={size}:r={rate}:d={seconds}", *extra, str(path))
    return path


H264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


class ChildWatch:
    """Records whether an ffmpeg process was started while a decode runs (did a pipe run?):
    a spy around the real ``subprocess.Popen``, which still starts every process. (Sampling
    this process's children missed a short pipe decode on a loaded machine.)"""

    def __init__(self) -> None:
        self.seen = False
        self._real = subprocess.Popen

    def _spy(self, cmd: Any, *args: Any, **kwargs: Any) -> subprocess.Popen:
        argv0 = cmd[0] if isinstance(cmd, (list, tuple)) else str(cmd).split()[0]
        self.seen |= "ffmpeg" in os.path.basename(os.fspath(argv0))
        return self._real(cmd, *args, **kwargs)

    def __enter__(self) -> ChildWatch:
        subprocess.Popen = self._spy  # type: ignore[misc]
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.Popen = self._real  # type: ignore[misc]


def decode_both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """(in-process frames, pipe frames, whether the in-process decode started an ffmpeg)."""
    info = probe(path)
    monkeypatch.setenv(libav.DECODER_ENV, "pipe")
    piped = list(read_frames(path, info=info, pix_fmt="yuv420p"))
    monkeypatch.setenv(libav.DECODER_ENV, "auto")
    with ChildWatch() as watch:
        here = list(read_frames(path, info=info, pix_fmt="yuv420p"))
    return here, piped, watch.seen


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("make", [
    pytest.param(lambda d: clip(d / "h264.mp4", *H264), id="h264-25fps"),
    pytest.param(lambda d: clip(d / "ntsc.mp4", "-f", "lavfi", "-i", "sine=d=2", *H264, "-c:a", "aac",
                                   rate="30000/1001"), id="h264-29.97fps-with-audio"),
    pytest.param(lambda d: clip(d / "odd.mp4", "-c:v", "mpeg4", "-pix_fmt", "yuv420p", size="97x63"),
                 id="mpeg4-odd-size"),
    pytest.param(lambda d: clip(d / "ffv1.mkv", "-c:v", "ffv1", "-pix_fmt", "yuv420p"), id="ffv1-mkv"),
])
def test_same_frames_as_the_pipe_without_an_ffmpeg_process(d: Path, make, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    path = make(d)
    assert libav.applies(probe(path))
    here, piped, spawned = decode_both(path, monkeypatch)
    assert len(piped) >= 50
    assert same(here, piped)
    assert not spawned  # decoded in this process
    w, h = probe(path).video.display_size
    assert here[0].shape == ((h - h % 2) * 3 // 2, w - w % 2)


@pytest.mark.parametrize("name", ["hdtf_aoc_512.mp4", "monalisa_720p.mp4", "sun_portrait_noaudio.mp4"])
def test_shared_videos_same_frames(shared_media: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    here, piped, spawned = decode_both(shared_media / name, monkeypatch)
    assert same(here, piped) and not spawned


def test_where_it_does_not_apply_the_pipe_decodes(d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = clip(d / "base.mp4", *H264)
    rotated = d / "rotated.mp4"
    ff("-display_rotation", "90", "-i", str(base), "-c", "copy", str(rotated))
    yuv444 = clip(d / "yuv444.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p")
    vfr = clip(d / "vfr.mp4", "-vf", r"select=lt(n\,10)+not(mod(n\,4))", "-fps_mode", "vfr", *H264)
    for path in (rotated, yuv444, vfr):
        info = probe(path)
        assert not libav.applies(info), path.name
        with ChildWatch() as watch:
            frames = list(read_frames(path, info=info, pix_fmt="yuv420p"))
        assert frames and watch.seen, path.name
    monkeypatch.setenv(libav.DECODER_ENV, "pipe")
    assert not libav.applies(probe(base))
    with ChildWatch() as watch:
        assert len(list(read_frames(base, pix_fmt="yuv420p"))) == 50
    assert watch.seen


def test_a_gap_mid_stream_continues_from_the_pipe(d: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Frame 50 of 100 is missing (not enough to count as VFR): ffmpeg's constant-rate output
    repeats a frame there, so from there on the frames come from the pipe."""
    path = clip(d / "gap.mp4", "-vf", "select='not(eq(n,50))'", "-fps_mode", "passthrough", *H264, seconds=4)
    assert libav.applies(probe(path))
    with caplog.at_level(logging.DEBUG, logger="pipeline.media.libav"):
        here, piped, spawned = decode_both(path, monkeypatch)
    assert "from frame 49 on" in caplog.text or "from frame 50 on" in caplog.text  # 49 shown twice
    assert spawned and len(piped) >= 100 and same(here, piped)  # 99 frames decoded, one repeated


def test_a_late_start_comes_from_the_pipe(d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The video starts 0.3 s after the audio: ffmpeg repeats its first frame to fill that."""
    src = clip(d / "src.mp4", *H264)
    late = d / "late.mp4"
    ff("-itsoffset", "0.3", "-i", str(src), "-f", "lavfi", "-i", "sine=d=2.3", "-map", "0:v", "-map", "1:a",
       "-c:v", "copy", "-c:a", "aac", str(late))
    here, piped, _ = decode_both(late, monkeypatch)
    assert len(piped) > 50 and same(here, piped)


def test_size_change_mid_stream_continues_from_the_pipe(d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipe scales frames of another size to the stream's; from the first such frame on,
    the frames come from the pipe."""
    a = clip(d / "a.ts", *H264, "-f", "mpegts")
    b = clip(d / "b.ts", *H264, "-output_ts_offset", "2", "-f", "mpegts", size="128x96")
    joined = d / "ab.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    here, piped, spawned = decode_both(joined, monkeypatch)
    assert spawned and len(here) == 100 and same(here, piped)
    assert {f.shape for f in here} == {(96, 96)}


def test_truncated_file_gives_the_frames_before_the_cut(d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = clip(d / "full.mp4", *H264, "-movflags", "+faststart", seconds=4)
    cut = d / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 6 // 10])
    here, piped, _ = decode_both(cut, monkeypatch)
    assert 10 < len(here) < 100 and same(here, piped)


def test_no_decodable_frame_is_invalid_media(d: Path) -> None:
    """A file whose frames' bytes are all zeroed (the probe, which decodes, refuses it: so the
    decoder is given a good file's facts with it)."""
    good = clip(d / "good.mp4", *H264, "-movflags", "+faststart")
    data = bytearray(good.read_bytes())
    mdat = data.index(b"mdat") + 4
    data[mdat:] = bytes(len(data) - mdat)  # every frame's bytes zeroed; the index still lists them
    broken = d / "zeroed.mp4"
    broken.write_bytes(bytes(data))
    info = probe(good)
    frames = libav.libav_frames(dataclasses.replace(info, path=str(broken)), threads=1,
                                       pipe=lambda: pytest.fail("the pipe was not needed"))
    with pytest.raises(InvalidMedia, match="zeroed.mp4: no video frame could be decoded"):
        list(frames)


def test_a_playlist_is_not_opened(d: Path) -> None:
    """The demuxer whitelist holds here too: an HLS playlist naming a local file, which PyAV
    opens without the whitelist, is not opened; every frame comes from the pipe."""
    segment = clip(d / "seg.ts", *H264, "-f", "mpegts")
    playlist = d / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{segment}\n#EXT-X-ENDLIST\n")
    with av.open(str(playlist)) as unguarded:  # without the whitelists it opens and reaches the segment
        assert unguarded.format.name == "hls"
    info = probe(segment)
    sentinel = [np.zeros((96, 96), np.uint8)]
    frames = libav.libav_frames(dataclasses.replace(info, path=str(playlist)), threads=1,
                                       pipe=lambda: (f for f in sentinel))
    assert list(frames) == sentinel


def test_selected_frames_are_the_selected_ones(d: Path) -> None:
    """A selection (more indices than ffmpeg's select filter takes, or fewer) yields only those."""
    path = clip(d / "select.mp4", *H264, seconds=4)
    every = list(read_frames(path, pix_fmt="yuv420p"))
    for wanted in (list(range(0, 140, 2)), [3, 50, 99]):
        picked = list(read_frames(path, pix_fmt="yuv420p", select=wanted))
        assert same(picked, [every[i] for i in wanted if i < len(every)])


def test_fresh_buffers_and_the_file_closed_early(d: Path) -> None:
    path = clip(d / "fresh.mp4", *H264)
    frames = read_frames(path, pix_fmt="yuv420p")
    first, second = next(frames), next(frames)
    assert not np.shares_memory(first, second) and first.flags.writeable
    kept = second.copy()
    first[:] = 0  # the caller pastes into the frames it gets
    assert np.array_equal(second, kept)
    frames.close()
    open_files = [f.path for f in psutil.Process().open_files()]
    assert os.fspath(path) not in open_files
