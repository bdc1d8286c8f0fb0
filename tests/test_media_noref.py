"""pipeline.media.noref: which H.264 packets a decode may drop (real libx264 files, real ffmpeg)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

import media
from pipeline.media import noref

def grey_ramp(n: int = 80) -> list[np.ndarray]:
    """n frames of different grey levels with a moving bar, so every frame differs."""
    frames = []
    for i in range(n):
        f = np.full((48, 64, 3), 3 * i + 10, np.uint8)
        f[:, i % 60:i % 60 + 4] = 255
        frames.append(f)
    return frames


@pytest.fixture(scope="module")
def bframes(synth_dir: Path) -> Path:
    return media.write_video(synth_dir / "noref_bframes.mp4", grey_ramp(), extra=media.X264_B_FRAMES)


def pict_types(path: Path) -> list[str]:
    """Each decoded frame's picture type, in display order (libavcodec's AV_PICTURE_TYPE_I/P/B)."""
    with av.open(str(path)) as c:
        return [{1: "I", 2: "P", 3: "B"}.get(int(f.pict_type), "?") for f in c.decode(video=0)]


def test_scan_finds_the_non_reference_pictures(bframes: Path) -> None:
    refs = noref.scan(bframes)
    assert refs is not None and len(refs.pts) == 80 and refs.fps == pytest.approx(25.0)
    types = pict_types(bframes)
    assert types.count("B") > 40  # 3 of every 4 frames
    assert [not r for r in refs.reference] == [t == "B" for t in types]  # in display order


def test_skip_leaves_the_wanted_frames(bframes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refs = noref.scan(bframes)
    skip = refs.skip(lambda i: i % 5 == 0, fps=25.0)
    assert skip is not None
    dropped = {refs.pts.index(refs.first + p) for p in skip.offsets}
    assert dropped == {i for i, r in enumerate(refs.reference) if not r and i % 5}
    assert refs.skip(lambda i: True, fps=25.0) is None  # nothing to drop
    assert refs.skip(lambda i: False, fps=30.0) is None  # frames numbered at another rate
    monkeypatch.setattr(noref, "MAX_DROPS", 3)
    assert refs.skip(lambda i: i % 5 == 0, fps=25.0).offsets == skip.offsets[:3]  # the first ones


@pytest.fixture(scope="module")
def late(synth_dir: Path) -> Path:
    """The same frames in a file whose first frame is at 10 s (ffmpeg moves the timestamps by
    that before its bitstream filters see them)."""
    return media.write_video(synth_dir / "noref_late.mp4", grey_ramp(),
                             extra=[*media.X264_B_FRAMES, "-output_ts_offset", "10"])


@pytest.mark.parametrize("name", ["bframes", "late"])
def test_ffmpeg_drops_exactly_those_packets(name: str, request: pytest.FixtureRequest) -> None:
    """The bitstream filter drops the named pictures; every other frame decodes as before, and
    ``Skip.index`` numbers the decoded frames as the stream does."""
    path = request.getfixturevalue(name)
    refs = noref.scan(path)
    assert (refs.first > 0) == (name == "late")
    skip = refs.skip(lambda i: i % 5 == 0, fps=25.0)
    every = framemd5(path)  # the frames in display order
    kept = framemd5(path, skip.input_args())
    dropped = {refs.pts.index(refs.first + p) for p in skip.offsets}
    assert len(every) == 80 and len(skip.offsets) > 20
    assert kept == {t: h for i, (t, h) in enumerate(every.items()) if i not in dropped}
    assert skip.frames_from(len(kept)) == 80 and skip.frames_from(80) == 80  # dropped, or not
    picked = [25, 35, 45]  # B-frames kept as wanted (multiples of 5), past dropped frames
    assert [pict_types(path)[i] for i in picked] == ["B"] * 3
    select = "+".join(f"eq({skip.index}\\,{i})" for i in picked)
    chosen = framemd5(path, skip.input_args(), ["-vf", f"select='{select}'", "-fps_mode", "passthrough"])
    assert list(chosen.values()) == [list(every.values())[i] for i in picked]


def framemd5(path: Path, pre: list[str] = (), post: list[str] = ()) -> dict[int, str]:
    """Output time -> md5 of each decoded frame (ffmpeg's framemd5 muxer), in display order."""
    out = subprocess.run([media.ffmpeg_exe(), "-v", "error", "-threads", "1", *pre, "-i", str(path), "-an",
                          *post, "-f", "framemd5", "-"], capture_output=True, text=True, check=True).stdout
    rows = [line.split(",") for line in out.splitlines() if line and not line.startswith("#")]
    return {int(r[2]): r[5].strip() for r in rows}


def test_where_it_does_not_apply(bframes: Path, synth_dir: Path, tmp_path: Path) -> None:
    """Another codec, no non-reference picture, a file that is no video: nothing is dropped."""
    ffv1 = media.write_video(synth_dir / "noref.mkv", grey_ramp(10), extra=["-c:v", "ffv1"])
    assert noref.scan(ffv1) is None
    ultrafast = media.write_video(synth_dir / "noref_p.mp4", grey_ramp(20))  # P-frames only
    refs = noref.scan(ultrafast)
    assert refs is not None and all(refs.reference) and refs.skip(lambda i: False, fps=25.0) is None
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 1000)
    assert noref.scan(junk) is None and noref.scan(tmp_path / "missing.mp4") is None


def test_member_expression_is_a_binary_search() -> None:
    """Each packet evaluates ~log2(n) comparisons, and the nesting stays shallow (ffmpeg's
    expression parser refuses a flat sum of more than ~100 terms)."""
    expr = noref._member(list(range(0, 2000, 2)))
    assert expr.count("eq(pts-startpts") == 1000
    depth = deepest = 0
    for ch in expr:
        depth += (ch == "(") - (ch == ")")
        deepest = max(deepest, depth)
    assert deepest <= 2 * 10
    assert noref._member([7]) == "eq(pts-startpts\\,7)"
    # the most one filter drops, at an hour's timestamps: one command-line argument takes 128 KB
    longest = noref._member(list(range(10**8, 10**8 + noref.MAX_DROPS * 3003, 3003)))
    assert len(longest) < 100_000


def test_read_frames_select_drops_the_unread_pictures(bframes: Path, caplog: pytest.LogCaptureFixture) -> None:
    """read_frames(select=) at the stream's own rate (how scoring reads the original's samples)
    drops the non-reference pictures it does not read; it yields the same frames."""
    import logging

    from pipeline.media.decode import read_frames

    every = list(read_frames(bframes, pix_fmt="yuv420p"))
    wanted = [3, 17, 41, 77]  # B-frames (not multiples of 4), kept while their neighbours are dropped
    with caplog.at_level(logging.DEBUG, logger="pipeline.media.decode"):
        picked = list(read_frames(bframes, pix_fmt="yuv420p", select=wanted))
    assert len(picked) == 4
    for frame, i in zip(picked, wanted):
        np.testing.assert_array_equal(frame, every[i])
    command = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("decode: "))
    assert "noise=drop=" in command
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="pipeline.media.decode"):
        resampled = list(read_frames(bframes, pix_fmt="yuv420p", fps=50.0, select=[6, 34]))  # other indices
    assert len(resampled) == 2 and "noise=drop=" not in caplog.text
    np.testing.assert_array_equal(resampled[1], every[17])
