"""Shared fixtures: synthetic media made once per session, and the real shared media."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import media  # noqa: E402  (tests/media.py)
from required import shared_folder  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no machine here can reach the Hub


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="session")
def speech_wav(synth_dir: Path) -> Path:
    """3.0 s of speech-like audio at 16 kHz: voiced 0.8 s / silent 0.5 s, repeated."""
    return media.write_wav(synth_dir / "speech.wav", media.speech_like(3.0))


@pytest.fixture(scope="session")
def face_mp4(synth_dir: Path) -> Path:
    """2.0 s, 25 fps, 384x384 H.264 video of a real face photo moving slightly; no audio."""
    return media.face_video(synth_dir / "face.mp4", seconds=2.0)


@pytest.fixture(scope="session")
def face_png(synth_dir: Path) -> Path:
    import cv2

    path = synth_dir / "face.png"
    cv2.imwrite(str(path), media.face_frame(0))
    return path


@pytest.fixture(scope="session")
def shared_media() -> Path:
    """The real media folder (../shared/media or $LIPSYNC_TEST_MEDIA); skips where absent."""
    return shared_folder("LIPSYNC_TEST_MEDIA", ROOT.parent / "shared" / "media", "hdtf_aoc_512.mp4",
                         "real test media")


# The app tests' client and job store: each app test module defines its own ``server``
# fixture (tests/app_server.py starts it); these two follow whichever server that is.
@pytest.fixture(scope="module")
def client(server):  # noqa: ANN001, ANN201 - AppServer -> gradio_client.Client
    from gradio_client import Client

    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def store(server):  # noqa: ANN001, ANN201 - AppServer -> storage.jobs.JobStore
    from storage.jobs import JobStore

    with JobStore(server.db_path, recover=False, retention=False) as s:
        yield s
