"""What scoring decodes: read_frames(select=...) (real ffmpeg), the alignment of odd sizes,
and scoring without SyncNet weights never importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import media
from eval.frames import (SampleFile, align, counted_frames, even_region, generated_frames,
                         original_samples, rate_frame, region_decodable, region_frames)
from pipeline.media.probe import probe
from pipeline.media.decode import SELECT_MAX_TERMS, read_frames
from pipeline.media.yuv import YuvFrame

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def counted(synth_dir: Path) -> Path:
    """80 frames of different grey levels (3 * index + 10), so any two frames differ."""
    frames = [np.full((48, 64, 3), 3 * i + 10, np.uint8) for i in range(80)]
    return media.write_video(synth_dir / "eval_counted.mp4", frames)


@pytest.mark.parametrize("pix_fmt", ["bgr24", "yuv420p"])
def test_select_yields_only_those_frames(counted: Path, pix_fmt: str) -> None:
    every = list(read_frames(counted, pix_fmt=pix_fmt))
    picked = list(read_frames(counted, pix_fmt=pix_fmt, select=[7, 0, 3, 7, 99]))  # unsorted, repeated, past the end
    assert len(every) == 80 and not np.array_equal(every[3], every[7])
    assert len(picked) == 3
    for frame, i in zip(picked, (0, 3, 7)):
        np.testing.assert_array_equal(frame, every[i])
    assert list(read_frames(counted, select=[])) == []
    with pytest.raises(ValueError, match="non-negative"):
        read_frames(counted, select=[-1])


def test_select_of_many_frames(counted: Path) -> None:
    """More indices than ffmpeg's select expression takes: filtered after decoding instead."""
    every = list(read_frames(counted))
    wanted = list(range(1, 200, 2))  # 100 indices, 40 of them past the end
    assert len(wanted) > SELECT_MAX_TERMS
    picked = list(read_frames(counted, select=wanted))
    assert len(picked) == 40
    for frame, i in zip(picked, range(1, 80, 2)):
        np.testing.assert_array_equal(frame, every[i])


def test_select_counts_after_resampling(counted: Path) -> None:
    """With fps= the indices are those of the resampled stream (25 -> 50 fps doubles frames)."""
    doubled = list(read_frames(counted, fps=50.0))
    picked = list(read_frames(counted, fps=50.0, select=[5, 10]))
    np.testing.assert_array_equal(picked[0], doubled[5])
    np.testing.assert_array_equal(picked[1], doubled[10])


def test_original_samples_match_the_generated_stream(counted: Path) -> None:
    """Both sides convert I420 the same way: a video against itself gives identical pixels."""
    info = probe(counted)
    al = align(info, info)
    assert al.note == "same size and frame rate" and al.size == (64, 48)
    gen = [f.to_bgr() for f in generated_frames(info, al)]
    samples = dict(original_samples(info, [2, 9]))
    assert sorted(samples) == [2, 9]
    np.testing.assert_array_equal(samples[9].to_bgr(), gen[9])


def test_region_decode_matches_the_whole_decode(counted: Path, tmp_path: Path) -> None:
    """One decode pipes the luma of a region of the frames at a rate, writes the sampled
    frames whole and counts every frame: the same bytes as the whole-frame decode."""
    info = probe(counted)
    al = align(info, info)
    assert region_decodable(info, al, [3, 40])
    every = [f.data for f in generated_frames(info, al)]
    x, y, w, h = even_region(9.5, 5.2, 40.1, 29.0, 64, 48)
    assert (x, y, w, h) == (8, 4, 34, 26)
    full, count = tmp_path / "full.yuv", tmp_path / "count.yuv"
    rate = 12.5 / (30000 / 1001)  # every 2nd or 3rd frame
    parts = list(region_frames(info, (x, y, w, h), rate, [40, 3, 99], full, count))
    at = [i for i in range(80) if rate_frame(i, rate)]
    assert len(parts) == len(at) and 30 < len(at) < 40 and at[:4] == [0, 3, 5, 8]
    assert counted_frames(count) == 80
    for k in range(len(at)):  # ffmpeg selected exactly the frames rate_frame names
        i = at[k]
        np.testing.assert_array_equal(parts[k].planes()[0], YuvFrame(every[i]).planes()[0][y:y + h, x:x + w])
    samples = SampleFile(full, [40, 3, 99], al.size)
    whole = list(samples.ready())
    assert list(samples.ready()) == []  # each frame once
    assert [i for i, _ in whole] == [3, 40]  # 99 lies past the end
    for i, frame in whole:
        np.testing.assert_array_equal(frame.data, every[i])
    assert not region_decodable(info, align(info, probe(media.write_video(
        tmp_path / "wide.mp4", [np.zeros((24, 32, 3), np.uint8)] * 3))), [3])  # scaled: whole frames


def test_region_decode_that_drops_unread_b_frames(synth_dir: Path, tmp_path: Path) -> None:
    """With the unread non-reference pictures dropped before the decoder (pipeline.media.noref),
    the region decode yields the same regions and samples, and counts the rest of the frames."""
    from pipeline.media import noref

    frames = [np.full((48, 64, 3), 3 * i + 10, np.uint8) for i in range(80)]
    for i, f in enumerate(frames):
        f[:, i % 60:i % 60 + 4] = 255  # motion, so B-frames carry it
    path = media.write_video(synth_dir / "eval_bframes.mp4", frames, extra=media.X264_B_FRAMES)
    info = probe(path)
    region, rate, samples = (8, 4, 34, 26), 12.5 / 25, [41, 3, 99]
    refs = noref.scan(path)
    skip = refs.skip(lambda i: i in samples or rate_frame(i, rate), fps=25.0)
    assert skip is not None and len(skip.offsets) > 15  # the odd-numbered B-frames but 3 and 41
    decoded = []
    for drop in (None, skip):
        full, count = tmp_path / f"full{drop is None}.yuv", tmp_path / f"count{drop is None}.yuv"
        parts = [p.y.copy() for p in region_frames(info, region, rate, samples, full, count, skip=drop)]
        decoded.append((parts, counted_frames(count), [f.data for _, f in SampleFile(full, samples, (64, 48)).ready()]))
    (parts, n, whole), (parts_skip, n_skip, whole_skip) = decoded
    assert n == 80 and n_skip == 80 - len(skip.offsets) and skip.frames_from(n_skip) == 80
    assert len(parts) == len(parts_skip) == 40 and len(whole) == len(whole_skip) == 2
    for a, b in zip(parts + whole, parts_skip + whole_skip):
        np.testing.assert_array_equal(a, b)


def test_odd_sized_original_is_compared_on_its_even_area(synth_dir: Path) -> None:
    odd = media.write_video(synth_dir / "eval_odd.mkv", [media.face_frame(i, size=97) for i in range(3)],
                            extra=["-c:v", "ffv1"])
    info = probe(odd)
    al = align(info, info)
    assert al.size == (96, 96) and "top-left 96x96" in al.note
    frame = next(generated_frames(info, al))
    assert frame.shape == (96, 96, 3)


def test_scoring_without_weights_does_not_import_torch(synth_dir: Path, speech_wav: Path,
                                                       tmp_path: Path) -> None:
    """With the job's track given (the app's path) and no SyncNet weights, torch stays unloaded."""
    video = media.face_video(synth_dir / "eval_notorch.mp4", seconds=2.0, audio=speech_wav)
    code = (
        "import json, sys\n"
        "from pipeline.faces.backends import make_tracker\nfrom pipeline.faces.tracking import track_frames\n"
        "from pipeline.media.decode import read_frames\n"
        "from eval.score import score_videos\n"
        f"v = {str(video)!r}\n"
        "track = track_frames(read_frames(v), scale=1.0, tracker=make_tracker('dlib'))\n"
        "s = score_videos(v, v, track=track)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'lse': s.get('lse_d').reason,\n"
        "                  'proxy': s.value('sync_proxy_corr')}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LIPSYNC_MODELS_DIR": str(tmp_path / "none"),
           "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(ROOT)}
    env.pop("LIPSYNC_SYNCNET_CHECKPOINT", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch"] is False
    assert out["lse"].startswith("n/a (no SyncNet weights)")
    assert out["proxy"] == pytest.approx(media.STILL_FACE_PROXY_CORR, abs=0.02)
