"""Running as a Hugging Face Space and by Gradio's conventions: settings and real servers.

``/data`` is stood in for by a temporary folder (``LIPSYNC_TEST_PERSISTENT_ROOT``, test-only);
the servers are real ``python app.py`` / ``gradio app.py`` processes on 127.0.0.1 with
``SPACE_ID`` set where a Space is meant (nothing here can reach Hugging Face).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_server import ROOT, free_port, start_app
from jobs.settings import DEFAULT_PORT, settings_from_env

pytestmark = pytest.mark.slow


def test_data_defaults_on_persistent_storage(tmp_path: Path) -> None:
    s = settings_from_env({"SPACE_ID": "me/app", "LIPSYNC_TEST_PERSISTENT_ROOT": str(tmp_path)})
    assert s.data_dir == tmp_path / "lipsync" and s.persistent and not s.history_lost_at_restart
    assert s.hf_home == tmp_path / ".huggingface"


def test_explicit_settings_win_over_the_data_defaults(tmp_path: Path) -> None:
    env = {"SPACE_ID": "me/app", "LIPSYNC_TEST_PERSISTENT_ROOT": str(tmp_path),
           "LIPSYNC_DATA_DIR": str(tmp_path / "elsewhere"), "HF_HOME": "/somewhere"}
    s = settings_from_env(env)
    assert s.data_dir == tmp_path / "elsewhere" and s.persistent  # still under the volume
    assert s.hf_home is None  # HF_HOME is left as set
    s = settings_from_env({**env, "LIPSYNC_DATA_DIR": "data"})
    assert not s.persistent and s.history_lost_at_restart


def test_without_persistent_storage_a_space_loses_its_history(tmp_path: Path) -> None:
    s = settings_from_env({"SPACE_ID": "me/app", "LIPSYNC_TEST_PERSISTENT_ROOT": str(tmp_path / "absent")})
    assert s.data_dir == Path("data") and s.hf_home is None and s.history_lost_at_restart
    off_space = settings_from_env({"LIPSYNC_TEST_PERSISTENT_ROOT": str(tmp_path / "absent")})
    assert not off_space.history_lost_at_restart and not off_space.private_sessions


def test_gradio_variables_and_lipsync_ones_win() -> None:
    s = settings_from_env({"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "9001",
                           "GRADIO_ROOT_PATH": "/lipsync"})
    assert (s.host, s.port, s.root_path) == ("0.0.0.0", 9001, "/lipsync")
    s = settings_from_env({"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "9001",
                           "LIPSYNC_HOST": "127.0.0.2", "LIPSYNC_PORT": "9002"})
    assert (s.host, s.port, s.root_path) == ("127.0.0.2", 9002, None)
    assert settings_from_env({}).port == DEFAULT_PORT


def test_reviewers_and_private_sessions() -> None:
    s = settings_from_env({"SPACE_ID": "me/app", "LIPSYNC_REVIEWERS": "alice, bob,", "OAUTH_CLIENT_ID": "x"})
    assert s.reviewers == ("alice", "bob") and s.oauth and s.private_sessions
    assert not settings_from_env({"SPACE_ID": "me/app", "LIPSYNC_AUTH": "u:p"}).private_sessions


def _wait_healthz(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"no /healthz at {url}: {log.read_text(errors='replace')[-3000:]}")


def _launch(cmd: list[str], tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("LIPSYNC_", "GRADIO_")) and k not in ("SPACE_ID", "SPACES_ZERO_GPU")}
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**base, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                                     "PYTHONUNBUFFERED": "1", "LIPSYNC_DATA_DIR": str(tmp_path / "data"),
                                     "LIPSYNC_EXECUTOR": "threads", **env})
    return proc, log


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and everything it started: ``gradio app.py`` serves from a child
    process (its reloader), which outlived a stop of the parent alone and kept polling the
    tree's files at ~75% of a core. The server has its own process group (``_launch``)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a child left behind by a parent that exited


def test_python_app_py_serves_on_gradio_server_port_alone(tmp_path: Path) -> None:
    port = free_port()
    proc, log = _launch([sys.executable, "app.py"], tmp_path, GRADIO_SERVER_PORT=str(port))
    try:
        _wait_healthz(f"http://127.0.0.1:{port}/", proc, log)
    finally:
        _stop(proc)


def test_gradio_app_py_reload_mode_serves_and_reloads(tmp_path: Path) -> None:
    """``gradio app.py`` finds the module-level ``demo``; touching a ui/ file reloads it."""
    port = free_port()
    gradio_cli = Path(sys.executable).with_name("gradio")
    proc, log = _launch([str(gradio_cli), "app.py"], tmp_path, GRADIO_SERVER_PORT=str(port))
    try:
        _wait_healthz(f"http://127.0.0.1:{port}/", proc, log)
        time.sleep(1.5)  # the watcher records the files' times first
        present = ROOT / "ui" / "present.py"
        os.utime(present)  # a change: same content, newer time
        deadline = time.monotonic() + 60
        while "Changes detected" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)
        text = log.read_text(errors="replace")
        assert "Watching demo: demo" in text and "Changes detected" in text, text[-3000:]
        assert "failed with the following exception" not in text, text[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as resp:  # noqa: S310
            assert resp.status == 200 and b"LipSync Lab" in resp.read()
    finally:
        _stop(proc)


def test_a_space_with_persistent_storage_keeps_history_and_weights_there(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    srv = start_app(tmp_path, SPACE_ID="me/app", LIPSYNC_DATA_DIR="", LIPSYNC_TEST_PERSISTENT_ROOT=str(volume),
                    LIPSYNC_EXECUTOR="threads")
    try:
        assert (volume / "lipsync" / "jobs.db").is_file()
        log = srv.log_tail(20000)
        assert f"HF_HOME={volume / '.huggingface'}" in log and "(persistent storage)" in log
    finally:
        srv.stop()


def test_a_space_without_persistent_storage_says_history_is_lost(tmp_path: Path) -> None:
    from storage.jobs import JobStore
    from ui.context import AppContext
    from ui.monitor import system_markdown

    srv = start_app(tmp_path, SPACE_ID="me/app", LIPSYNC_TEST_PERSISTENT_ROOT=str(tmp_path / "no-volume"),
                    LIPSYNC_EXECUTOR="threads")
    try:
        assert "LOST at every restart" in srv.log_tail(20000)
    finally:
        srv.stop()
    settings = settings_from_env({"SPACE_ID": "me/app", "LIPSYNC_TEST_PERSISTENT_ROOT": str(tmp_path / "none"),
                                  "LIPSYNC_DATA_DIR": str(tmp_path / "data")})
    with JobStore(settings.db_path, data_dir=settings.data_dir) as store:
        text = system_markdown(AppContext(settings=settings, store=store))
    assert "the job history is lost at every restart" in text
    assert "each visitor sees only the jobs of their own browser session" in text


# The keys of the Space configuration reference (huggingface/hub-docs,
# docs/hub/spaces-config-reference.md, read at commit 242f4a1 of 2026-08-22).
CONFIG_KEYS = {"title", "emoji", "colorFrom", "colorTo", "sdk", "python_version", "sdk_version",
               "suggested_hardware", "suggested_storage", "app_file", "app_build_command", "app_port",
               "base_path", "fullWidth", "header", "short_description", "models", "datasets", "tags",
               "thumbnail", "pinned", "hf_oauth", "hf_oauth_scopes", "hf_oauth_expiration_minutes",
               "hf_oauth_authorized_org", "disable_embedding", "startup_duration_timeout",
               "custom_headers", "preload_from_hub"}
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def test_readme_front_matter_is_a_valid_space_configuration() -> None:
    import re

    import yaml

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert set(meta) <= CONFIG_KEYS, set(meta) - CONFIG_KEYS
    assert meta["sdk"] == "gradio" and {meta["colorFrom"], meta["colorTo"]} <= COLORS
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert meta["sdk_version"] == pins["gradio"]  # the Space installs the gradio we test
    assert isinstance(meta["python_version"], str) and re.fullmatch(r"3\.\d+(\.\d+)?", meta["python_version"])
    assert (ROOT / meta["app_file"]).is_file()
    assert meta["hf_oauth"] is True and 0 < meta["hf_oauth_expiration_minutes"] <= 43200
    assert len(meta["short_description"]) <= 60 and isinstance(meta["pinned"], bool)


def test_one_opencv_build_without_gui_libraries() -> None:
    """``make`` leaves one cv2, the headless build, which needs no libGL, X11 or glib (a slim
    machine or container has none: the GUI build that insightface depends on fails to import
    there). A Space installs requirements.txt with pip alone, where the GUI build's files may
    win: its packages.txt installs what that build links against, and both wheels are pinned
    to one release."""
    import cv2
    from importlib import metadata

    gui = [line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
           if line.strip().startswith("GUI:")]
    assert gui == ["NONE"]
    installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert "opencv-python-headless" in installed and "opencv-python" not in installed
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["opencv-python"] == pins["opencv-python-headless"]  # the one release of both wheels
    assert pins["opencv-python-headless"].startswith(cv2.__version__ + ".")  # the one installed
    assert {"libgl1", "libglib2.0-0"} <= set((ROOT / "packages.txt").read_text().split())
