"""The run loop end to end on synthetic media: real ffmpeg, real dlib, no weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import media
from pipeline.errors import InvalidMedia, JobCancelled, JobTimeout, NoFaceFound
from pipeline.options import RunOptions
from pipeline.media.probe import probe
from pipeline.run import run
from pipeline.media.decode import read_frames


def _check_output(path: Path, *, audio_s: float, fps: float, size: tuple[int, int]) -> None:
    info = probe(path)
    assert info.video is not None and info.video.codec == "h264"
    assert info.audio is not None and info.audio.codec == "aac"
    assert info.video.display_size == size
    assert abs(info.video.fps - fps) < 0.01
    assert abs(info.duration_s - audio_s) <= 1.0 / fps + 0.05  # container rounding of AAC


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def test_passthrough_extends_video_to_audio(face_mp4: Path, speech_wav: Path, tmp_path: Path, work: Path) -> None:
    seen: list[tuple[str, float]] = []
    out = tmp_path / "out.mp4"
    result = run(face_mp4, speech_wav, out, options=RunOptions(model="passthrough", work_dir=str(work)),
                 progress=lambda stage, f: seen.append((stage, f)))
    assert out.exists() and result.output_path == str(out)
    assert result.model_used == "passthrough"
    assert result.frames == 75 and result.fps == 25.0  # 3.0 s of audio at the video's 25 fps
    _check_output(out, audio_s=3.0, fps=25.0, size=(384, 384))
    assert {"probe", "audio", "decode", "generate", "encode", "mux"} <= set(result.timings)
    assert "track" not in result.timings  # passthrough needs no faces
    assert list(work.iterdir()) == []  # the job's temp folder is gone
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and seen[-1] == ("done", 1.0)
    # ping-pong: output frame 50 + k shows source frame 48 - k (2 s = 50 source frames)
    frames = list(read_frames(out))
    src = list(read_frames(face_mp4))
    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
    assert diff(frames[55], src[44]) < diff(frames[55], src[5])


def test_extension_spools_only_the_frames_shown_again(face_mp4: Path, tmp_path: Path) -> None:
    """``plan_frames`` yields the plan's frames exactly, spooling only the revisited ones: a
    clip extended by 3 frames ping-pong spools 3 frames, not the whole clip."""
    from pipeline.media.decode import plan_frames
    from pipeline.media.decode import frame_plan
    from pipeline.media.yuv import YuvFrame

    info = probe(face_mp4)
    src = [YuvFrame(f).data for f in read_frames(face_mp4, pix_fmt="yuv420p")]  # 50 frames
    plan = frame_plan(len(src), len(src) + 3, "pingpong")
    assert list(plan[-4:]) == [49, 48, 47, 46]
    frames = plan_frames(read_frames(face_mp4, info=info, pix_fmt="yuv420p"), info, plan, tmp_path)
    got = [next(frames).data for _ in range(len(src) + 1)]
    assert (tmp_path / "frames.raw").stat().st_size == 3 * src[0].nbytes
    got += [f.data for f in frames]
    assert len(got) == len(plan) and not (tmp_path / "frames.raw").exists()
    assert [k for k, i in enumerate(plan) if not np.array_equal(got[k], src[i])] == []


def test_short_audio_cuts_video(face_mp4: Path, synth_dir: Path, tmp_path: Path) -> None:
    short = media.write_wav(synth_dir / "short.wav", media.speech_like(1.0))
    result = run(face_mp4, short, tmp_path / "o.mp4", options=RunOptions(model="passthrough"))
    assert result.frames == 25
    _check_output(tmp_path / "o.mp4", audio_s=1.0, fps=25.0, size=(384, 384))


def test_still_photo_becomes_video(face_png: Path, speech_wav: Path, tmp_path: Path) -> None:
    result = run(face_png, speech_wav, tmp_path / "o.mp4", options=RunOptions(model="baseline"))
    assert result.fps == 25.0 and result.frames == 75 and result.frames_without_face == 0
    _check_output(tmp_path / "o.mp4", audio_s=3.0, fps=25.0, size=(384, 384))


def test_auto_without_weights_falls_back_with_reason(face_mp4: Path, speech_wav: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path / "no-models"))
    monkeypatch.delenv("LIPSYNC_WAV2LIP_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run(face_mp4, speech_wav, tmp_path / "o.mp4", options=RunOptions(model="auto"))
    assert result.model_used == "baseline"
    assert "no Wav2Lip weights" in result.model_reason
    assert result.timings["track"] > 0


def test_side_by_side_review_video(face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    sbs = tmp_path / "sbs.mp4"
    run(face_mp4, speech_wav, tmp_path / "o.mp4", options=RunOptions(model="baseline"), side_by_side=sbs)
    _check_output(sbs, audio_s=3.0, fps=25.0, size=(768, 384))
    left_right = next(iter(read_frames(sbs)))
    first = next(iter(read_frames(face_mp4)))
    assert np.abs(left_right[:, :384].astype(int) - first.astype(int)).mean() < 4  # left = original


def test_cancel_and_timeout_leave_nothing(face_mp4: Path, speech_wav: Path, tmp_path: Path, work: Path) -> None:
    out = tmp_path / "o.mp4"
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # after probe, audio, track: cancel during generation

    with pytest.raises(JobCancelled) as info:
        run(face_mp4, speech_wav, out, options=RunOptions(model="baseline", work_dir=str(work)), cancel=cancel)
    assert not out.exists() and list(work.iterdir()) == []
    assert info.value.timings["seconds"]["probe"] > 0  # partial timings ride on the exception
    with pytest.raises(JobTimeout, match="time limit"):
        run(face_mp4, speech_wav, out, options=RunOptions(model="baseline", timeout_s=1e-6, work_dir=str(work)))
    assert not out.exists() and list(work.iterdir()) == []


def _ffmpeg_children() -> list[int]:
    """Live ffmpeg processes whose parent is this test process."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            name = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if fields[1] == me and fields[0] != "Z" and name.startswith("ffmpeg"):
            found.append(int(stat.parent.name))
    return found


def test_no_face_anywhere(synth_dir: Path, speech_wav: Path, tmp_path: Path, work: Path) -> None:
    """The job fails while tracking, after its encoder has started (it starts with the job):
    the encoder is stopped and nothing is left behind."""
    rng = np.random.default_rng(0)
    frames = [np.full((240, 320, 3), 90 + i, np.uint8) + rng.integers(0, 20, (240, 320, 3), dtype=np.uint8)
              for i in range(25)]
    blank = media.write_video(synth_dir / "blank.mp4", frames)
    with pytest.raises(NoFaceFound, match="sampled"):
        run(blank, speech_wav, tmp_path / "o.mp4", options=RunOptions(model="baseline", work_dir=str(work)))
    assert not (tmp_path / "o.mp4").exists() and list(work.iterdir()) == []
    if Path("/proc/self/stat").exists():
        assert _ffmpeg_children() == []
    # passthrough needs no face and succeeds on the same input
    run(blank, speech_wav, tmp_path / "p.mp4", options=RunOptions(model="passthrough"))


def test_bad_inputs_are_named(synth_dir: Path, face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    text = synth_dir / "notes.mp4"
    text.write_text("this is not a video\n")
    with pytest.raises(InvalidMedia, match="notes.mp4"):
        run(text, speech_wav, tmp_path / "o.mp4", options=RunOptions(model="passthrough"))
    with pytest.raises(InvalidMedia, match="no audio"):
        run(face_mp4, face_mp4, tmp_path / "o.mp4", options=RunOptions(model="passthrough"))
    assert not (tmp_path / "o.mp4").exists()


def test_keep_hands_over_the_original_frames(face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    """Kept frames are the ORIGINAL source frames (before the baseline's paste), only inside
    the source; the scorer compares them with the decoded output."""
    result = run(face_mp4, speech_wav, tmp_path / "o.mp4", options=RunOptions(model="baseline"),
                 keep=[0, 20, 49, 60])
    assert sorted(result.originals) == [0, 20, 49]  # 60 lies in the ping-pong extension
    src = list(read_frames(face_mp4, pix_fmt="yuv420p"))
    for i, frame in result.originals.items():
        assert np.array_equal(frame.data, src[i])  # byte-identical to a fresh decode
    from pipeline.media.audio import load_audio

    assert np.array_equal(result.speech, load_audio(speech_wav))  # the speech, for the scorer too
    assert "speech" not in result.to_dict()
    plain = run(face_mp4, speech_wav, tmp_path / "p.mp4", options=RunOptions(model="passthrough"))
    assert plain.speech is None and plain.originals == {}  # nothing kept without keep=


def test_speech_error_from_its_thread_reaches_the_caller(face_mp4: Path, speech_wav: Path, tmp_path: Path,
                                                          work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The speech decodes on a thread beside the frame count; its failure is the job's error,
    with the stage timings so far, and leaves no output and no job folder. (Fault injection:
    ``load_audio`` is replaced by one that raises, since a file that passes the probe but
    fails to decode cannot be made reliably.)"""
    def broken(path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise InvalidMedia("speech.wav: the decoder gave no samples")

    monkeypatch.setattr("pipeline.run.audio_mod.load_audio", broken)
    out = tmp_path / "never.mp4"
    with pytest.raises(InvalidMedia, match="gave no samples") as info:
        run(face_mp4, speech_wav, out, options=RunOptions(model="passthrough", work_dir=str(work)))
    assert not out.exists() and list(work.iterdir()) == []
    assert "probe" in info.value.timings["seconds"] and "audio" in info.value.timings["offsets"]


def test_mels_only_for_generators_that_read_them(face_mp4: Path, speech_wav: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The passthrough reads no mel windows, so none are computed for it; the baseline's are.
    The first batch is small (the encoder gets frames sooner), the others full size.
    (The real functions run; they are wrapped only to count the calls and batch sizes.)"""
    import pipeline.media.audio as audio_mod
    from pipeline.generators.baseline import BaselineJob
    from pipeline.generators.passthrough import PassthroughJob
    from pipeline.run import FIRST_BATCH

    calls: list[int] = []
    real_mel = audio_mod.melspectrogram
    monkeypatch.setattr(audio_mod, "melspectrogram", lambda wav: calls.append(len(wav)) or real_mel(wav))
    sizes: dict[str, list[int]] = {"passthrough": [], "baseline": []}
    for name, job in (("passthrough", PassthroughJob), ("baseline", BaselineJob)):
        real = job.process
        monkeypatch.setattr(job, "process", lambda self, frames, mels, faces, real=real, name=name:
                            sizes[name].append(len(frames)) or real(self, frames, mels, faces))
    run(face_mp4, speech_wav, tmp_path / "p.mp4", options=RunOptions(model="passthrough", batch_size=32))
    assert calls == []
    run(face_mp4, speech_wav, tmp_path / "b.mp4", options=RunOptions(model="baseline", batch_size=32))
    assert len(calls) == 1
    for got in sizes.values():
        assert got == [FIRST_BATCH, 32, 32, 75 - 32 * 2 - FIRST_BATCH], got  # 75 frames: 3 s at 25 fps
