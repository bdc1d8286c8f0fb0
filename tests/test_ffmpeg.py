"""pipeline.media.ffmpeg: which binary runs, how errors surface, and that every input is opened
through ``input_args`` so a crafted file cannot make ffmpeg read anything but itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.media import ffmpeg as ffmpeg_mod
from pipeline.media.audio import SAMPLE_RATE, load_audio
from pipeline.errors import FFmpegError, InvalidMedia
from pipeline.media.ffmpeg import base_cmd, ffmpeg_exe, input_args, run_ffmpeg
from pipeline.media.probe import probe
from pipeline.media.encode import FrameWriter
from pipeline.media.decode import read_frames

ROOT = Path(__file__).resolve().parents[1]
SECRET_HZ = 1234.0  # the tone that identifies the secret's content in any decoded output
PLAYLIST = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
            "#EXTINF:2.0,\n{segment}\n#EXT-X-ENDLIST\n")


def ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def tone_share(wav: np.ndarray, hz: float = SECRET_HZ) -> float:
    """Fraction of the signal's energy within 20 Hz of ``hz``."""
    spec = np.abs(np.fft.rfft(wav)) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1 / SAMPLE_RATE)
    return float(spec[np.abs(freqs - hz) < 20].sum() / max(spec.sum(), 1e-12))


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private media file (a 2 s tone with a picture, MPEG-TS, an HLS segment type) and
    playlists that point at it by relative name, by absolute path and by file: URL, one
    renamed to .mp4, and an ffconcat list (also named .mp4) pointing at it."""
    d = tmp_path_factory.mktemp("ffmpeg")
    private = d / "private"
    private.mkdir()
    seg = private / "secret.ts"
    ff("-f", "lavfi", "-i", f"sine=f={SECRET_HZ:g}:d=2:r={SAMPLE_RATE}", "-f", "lavfi",
       "-i", "testsrc=s=64x48:r=25:d=2", "-c:a", "aac", "-c:v", "mpeg2video", str(seg))
    paths = {"segment": seg}
    for key, ref in (("relative", "private/secret.ts"), ("absolute", str(seg)), ("url", f"file://{seg}")):
        p = d / f"{key}.m3u8"
        p.write_text(PLAYLIST.format(segment=ref))
        paths[key] = p
    disguised = d / "upload.mp4"  # a playlist renamed: ffmpeg detects formats by content
    disguised.write_text(PLAYLIST.format(segment=str(seg)))
    paths["disguised"] = disguised
    concat = d / "clip.mp4"  # an ffconcat list, also detected by content
    concat.write_text("ffconcat version 1.0\nfile private/secret.ts\n")
    paths["ffconcat"] = concat
    return paths


def decode_unrestricted(path: Path) -> np.ndarray:
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-vn",
           "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(out, "<f4")


# ---- the binary and the runner ------------------------------------------------------------

def test_ffmpeg_exe_runs_and_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, check=True)
    assert out.stdout.startswith(b"ffmpeg version")
    fake = tmp_path / "my-ffmpeg"
    monkeypatch.setenv("LIPSYNC_FFMPEG", str(fake))
    ffmpeg_mod.ffmpeg_exe.cache_clear()
    try:
        assert ffmpeg_exe() == str(fake)
        assert base_cmd()[0] == str(fake)
    finally:
        monkeypatch.delenv("LIPSYNC_FFMPEG")
        ffmpeg_mod.ffmpeg_exe.cache_clear()
    assert ffmpeg_exe() != str(fake)


def _exe_in_fresh_process(env_extra: dict[str, str], tmp_path: Path) -> tuple[str, bool]:
    """(ffmpeg_exe(), whether imageio_ffmpeg was imported) in a new interpreter whose PATH has
    no ffmpeg (only its own folder) and no LIPSYNC_FFMPEG."""
    env = {k: v for k, v in os.environ.items() if k not in ("LIPSYNC_FFMPEG", "IMAGEIO_FFMPEG_EXE")}
    env.update(PATH=str(tmp_path), PYTHONPATH=str(ROOT), **env_extra)
    code = ("import sys; from pipeline.media.ffmpeg import ffmpeg_exe; "
            "print(ffmpeg_exe()); print('imageio_ffmpeg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split("\n")
    return out[0], out[1] == "True"


def test_bundled_ffmpeg_is_found_without_importing_or_running_it(tmp_path: Path) -> None:
    """Without ffmpeg on PATH the binary of imageio-ffmpeg's wheel is used, found on disk:
    the same file imageio_ffmpeg.get_ffmpeg_exe() checks by running it, but neither the
    package's import nor that run happen in a job's process. $IMAGEIO_FFMPEG_EXE still
    goes through imageio-ffmpeg, which honours it."""
    import imageio_ffmpeg

    exe, imported = _exe_in_fresh_process({}, tmp_path)
    assert exe == imageio_ffmpeg.get_ffmpeg_exe() and os.path.isabs(exe)
    assert not imported
    chosen = tmp_path / "chosen-ffmpeg"
    exe, imported = _exe_in_fresh_process({"IMAGEIO_FFMPEG_EXE": str(chosen)}, tmp_path)
    assert (exe, imported) == (str(chosen), True)


def test_run_ffmpeg_error_carries_stderr(tmp_path: Path) -> None:
    with pytest.raises(FFmpegError, match=r"transcoding failed \(ffmpeg exit \d+\): .*No such file"):
        run_ffmpeg([*input_args(tmp_path / "missing.wav"), "-f", "null", "-"], what="transcoding")


def test_input_args_whitelists() -> None:
    args = input_args("/x/clip.mp4", pre=["-ss", "1"])
    assert args[:2] == ["-ss", "1"]
    assert args[args.index("-protocol_whitelist") + 1] == "file"
    demuxers = args[args.index("-format_whitelist") + 1].split(",")
    assert "mov" in demuxers and "wav" in demuxers and "png_pipe" in demuxers
    assert not {"hls", "dash", "concat", "tee", "data", "http", "subfile"} & set(demuxers)
    assert args[-2:] == ["-i", "file:/x/clip.mp4"]


def test_protocol_looking_name_is_a_plain_file(monkeypatch: pytest.MonkeyPatch,
                                               secret: dict[str, Path]) -> None:
    """A file literally named like an ffmpeg URL is opened as that file, not as the URL."""
    monkeypatch.chdir(secret["segment"].parent)
    p = Path("concat:secret.ts|secret.ts")
    p.write_bytes(b"not media\n" * 10)
    with pytest.raises(InvalidMedia, match=r"is not a media file \(it contains text\)"):
        probe(p)


# ---- playlists pointing at a secret file are refused everywhere ---------------------------

def test_unrestricted_ffmpeg_would_leak(secret: dict[str, Path]) -> None:
    """The premise: a plain ``ffmpeg -i playlist`` decodes the secret segment's content."""
    assert tone_share(decode_unrestricted(secret["relative"])) > 0.9
    assert tone_share(decode_unrestricted(secret["ffconcat"])) > 0.9


@pytest.mark.parametrize("key", ["relative", "absolute", "url", "disguised", "ffconcat"])
def test_probe_refuses_playlist(secret: dict[str, Path], key: str) -> None:
    p = secret[key]
    with pytest.raises(InvalidMedia) as ei:
        probe(p)
    msg = str(ei.value)
    assert msg == f"{p.name}: is a playlist, not a media file (playlists are not accepted; upload the media itself)"


@pytest.mark.parametrize("key", ["relative", "disguised", "ffconcat"])
def test_decoders_refuse_playlist(secret: dict[str, Path], key: str) -> None:
    p = secret[key]
    with pytest.raises(InvalidMedia):
        load_audio(p)
    with pytest.raises(InvalidMedia):
        list(read_frames(p))


@pytest.mark.parametrize("key", ["relative", "url", "disguised", "ffconcat"])
def test_writer_refuses_playlist_as_audio(tmp_path: Path, secret: dict[str, Path], key: str) -> None:
    """The muxer opens its audio through input_args too: no secret reaches the output."""
    out = tmp_path / "out.mp4"
    with pytest.raises(FFmpegError, match=r"encoding out.mp4 failed"):
        with FrameWriter(out, 64, 48, 25, audio_path=secret[key]) as w:
            for _ in range(50):
                w.write(np.full((48, 64, 3), 90, np.uint8))
    assert not out.exists()


def test_writer_muxes_a_real_audio_file_in_the_same_setup(tmp_path: Path, secret: dict[str, Path]) -> None:
    """Control for the refusal above: the same writer muxes the segment given directly."""
    out = tmp_path / "direct.mp4"
    with FrameWriter(out, 64, 48, 25, audio_path=secret["segment"]) as w:
        for _ in range(25):
            w.write(np.full((48, 64, 3), 90, np.uint8))
    assert tone_share(load_audio(out)) > 0.9
