"""``python -m jobs`` (recorded and scored) and ``python -m pipeline`` (the run loop alone):
JSON results, one-line errors, jobs recorded in SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.media.probe import AudioStream, probe

ROOT = Path(__file__).resolve().parents[1]
SPEECH_TRACK = AudioStream(codec="aac", sample_rate=16000, channels=1)  # speech_wav: 16 kHz mono, 3.0 s


def assert_speech_track(out: Path) -> None:
    info = probe(out)
    assert info.audio == SPEECH_TRACK
    assert info.duration_s == pytest.approx(3.0, abs=0.05)  # the 2.0 s video extended to the speech


def cli(*args: str, data_dir: Path, package: str = "jobs", **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIPSYNC_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **extra_env}
    return subprocess.run([sys.executable, "-m", package, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bare_run_loop_records_and_scores_nothing(face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    proc = cli("run", str(face_mp4), str(speech_wav), "-o", str(out), "--model", "passthrough", "--json",
               data_dir=tmp_path / "data", package="pipeline")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["model_used"] == "passthrough" and res["frames"] == 75 and "job_id" not in res
    assert_speech_track(out)
    assert not (tmp_path / "data").exists()  # no history opened
    bad = cli("run", str(face_mp4), str(speech_wav), "-o", str(out), "--no-record",
              data_dir=tmp_path / "data", package="pipeline")
    assert bad.returncode == 2 and "--no-record" in bad.stderr  # the bare loop has no history to skip


def test_run_json_and_record(face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    proc = cli("run", str(face_mp4), str(speech_wav), "-o", str(out), "--model", "baseline", "--json",
               data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    for key in ("output_path", "model_used", "model_reason", "frames", "fps", "duration_s",
                "frames_without_face", "timings", "peak_rss_mb", "job_id"):
        assert key in res, key
    assert res["model_used"] == "baseline" and res["frames"] == 75 and res["peak_rss_mb"] > 0
    assert_speech_track(out)
    from storage.jobs import JobStore

    with JobStore(tmp_path / "data" / "jobs.db") as store:
        job = store.get(res["job_id"])
    assert job["status"] == "succeeded" and job["source"] == "cli"
    assert job["model_used"] == "baseline"
    assert {"probe", "track", "generate", "encode"} <= {s["stage"] for s in job["stages"]}
    metrics = {s["metric"]: s for s in job["scores"]}
    assert metrics["lse_d"]["value"] is None and "no SyncNet weights" in metrics["lse_d"]["reason"]
    assert metrics["psnr_full"]["value"] == pytest.approx(29.88, abs=0.3)  # only the mouth region changed


def test_errors_are_one_line_and_recorded(face_mp4: Path, tmp_path: Path) -> None:
    bad = tmp_path / "speech.wav"
    bad.write_bytes(b"")
    proc = cli("run", str(face_mp4), str(bad), "-o", str(tmp_path / "o.mp4"), "--model", "baseline",
               data_dir=tmp_path / "data")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "speech.wav" in lines[0]
    assert "Traceback" not in proc.stderr
    from storage.jobs import JobStore

    with JobStore(tmp_path / "data" / "jobs.db") as store:
        (job,) = store.list()
    assert job["status"] == "failed" and job["error_type"] == "InvalidMedia"


def test_no_record(face_mp4: Path, speech_wav: Path, tmp_path: Path) -> None:
    proc = cli("run", str(face_mp4), str(speech_wav), "-o", str(tmp_path / "o.mp4"), "--model",
               "passthrough", "--no-record", "--no-score", "--json", data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["job_id"] is None
    assert not (tmp_path / "data" / "jobs.db").exists()


def test_encoder_variable_reads_the_same_in_the_cli_and_the_app(face_mp4: Path, speech_wav: Path,
                                                                tmp_path: Path) -> None:
    """$LIPSYNC_ENCODER, case and spaces ignored, is the CLI's default encoder as it is the
    app's setting; a value that is not an encoder is refused by both, naming the variable."""
    from jobs.settings import SettingsError, settings_from_env

    proc = cli("run", str(face_mp4), str(speech_wav), "-o", str(tmp_path / "o.mp4"), "--model", "passthrough",
               "--no-record", "--no-score", "--json", data_dir=tmp_path / "data", LIPSYNC_ENCODER=" LIBX264 ")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["encoder"] == "libx264"
    assert settings_from_env({"LIPSYNC_ENCODER": " LIBX264 "}).encoder == "libx264"
    bad = cli("run", str(face_mp4), str(speech_wav), "-o", str(tmp_path / "o.mp4"), "--model", "passthrough",
              "--no-record", "--no-score", data_dir=tmp_path / "data", LIPSYNC_ENCODER="x265")
    assert bad.returncode == 2 and "LIPSYNC_ENCODER='x265': choose one of auto, libx264, h264_nvenc" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    with pytest.raises(SettingsError, match="LIPSYNC_ENCODER='x265': choose one of auto, libx264, h264_nvenc"):
        settings_from_env({"LIPSYNC_ENCODER": "x265"})


# Every shared video and every shared audio file is used at least once.
MATRIX = [
    ("hdtf_aoc_512.mp4", "speech_en_60s.wav", "baseline"),  # 60 s audio drives the 8 s clip
    ("sun_portrait_noaudio.mp4", "sun.wav", "baseline"),  # video-only input, 44.1 kHz audio
    ("monalisa_720p.mp4", "speech_44k.mp3", "baseline"),  # 29.97 fps, mp3
    ("hdtf_aoc_512.mp4", "radio_stereo_8s.wav", "passthrough"),  # mpeg4 video, stereo audio
    ("monalisa_720p.mp4", "speech_48k_24bit.wav", "passthrough"),  # 24-bit 48 kHz
]


@pytest.mark.slow
@pytest.mark.parametrize(("video", "audio", "model"), MATRIX)
def test_real_media_matrix(shared_media: Path, tmp_path: Path, video: str, audio: str, model: str) -> None:
    out = tmp_path / "out.mp4"
    proc = cli("run", str(shared_media / video), str(shared_media / audio), "-o", str(out),
               "--model", model, "--json", "--no-record", "--no-score", data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    vin, ain, vout = probe(shared_media / video), probe(shared_media / audio), probe(out)
    assert abs(vout.video.fps - vin.video.fps) < 0.01
    assert vout.video.display_size == tuple(s - s % 2 for s in vin.video.display_size)
    assert abs(vout.duration_s - ain.duration_s) <= 2.0 / vin.video.fps + 0.05
    assert res["frames_without_face"] <= res["frames"] // 10


def test_exit_now_finishes_what_a_normal_exit_would(tmp_path: Path) -> None:
    """The CLIs end through ``exit_now``: the exit code is kept, a worker thread still writing
    is waited for, atexit handlers run (a log file flushed, a temporary folder removed), and
    unterminated output on stdout and stderr is not lost; only the interpreter's teardown is
    skipped."""
    code = (
        "import atexit, logging, sys, tempfile, threading, time\n"
        "from pathlib import Path\n"
        "from pipeline.__main__ import exit_now\n"
        f"out = Path({str(tmp_path)!r})\n"
        "logging.basicConfig(filename=out / 'log.txt', level=logging.INFO)\n"
        "logging.getLogger('t').info('logged before exit')\n"
        "scratch = tempfile.TemporaryDirectory(dir=out)\n"
        "(out / 'scratch.txt').write_text(scratch.name)\n"
        "atexit.register(lambda: (out / 'atexit.txt').write_text('ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), (out / 'thread.txt').write_text('done'))).start()\n"
        "sys.stdout.write('no newline on stdout')\n"
        "sys.stderr.write('no newline on stderr')\n"
        "exit_now(3)\n"
        "print('never')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout == "no newline on stdout" and proc.stderr == "no newline on stderr"
    assert (tmp_path / "atexit.txt").read_text() == "ran" and (tmp_path / "thread.txt").read_text() == "done"
    assert "logged before exit" in (tmp_path / "log.txt").read_text()
    assert not Path((tmp_path / "scratch.txt").read_text()).exists()
