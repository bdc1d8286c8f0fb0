"""Starting the real app (``python app.py``) as a subprocess for API and browser tests.

The server listens on 127.0.0.1 on a free port, with its own LIPSYNC_DATA_DIR and
HF_HUB_OFFLINE=1; :func:`start_app` waits for /healthz and :meth:`AppServer.stop` ends it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.db"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local test server
        return resp.status


def start_app(tmp: Path, **env: str) -> AppServer:
    """Start ``python app.py`` with a tmp data folder; extra ``env`` overrides settings
    (``SPACE_ID`` and ``SPACES_ZERO_GPU`` are dropped from this process's environment: pass
    them in ``env`` to start the app as a Space)."""
    port = free_port()
    data_dir = tmp / "data"
    log_path = tmp / "app.log"
    base = {k: v for k, v in os.environ.items() if k not in ("SPACE_ID", "SPACES_ZERO_GPU")}
    full_env = {**base, "LIPSYNC_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
                "LIPSYNC_HOST": "127.0.0.1", "LIPSYNC_PORT": str(port),
                "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **env}
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full_env, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    server = AppServer(url=f"http://127.0.0.1:{port}/", data_dir=data_dir, log_path=log_path, process=proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if _get(server.url + "healthz") == 200:
                return server
        except OSError:
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"app.py did not answer /healthz within {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def app_fixture(name: str, **env: str):  # noqa: ANN201 - a pytest fixture function
    """A module-scoped ``server`` fixture: ``python app.py`` in a tmp folder named ``name``
    with ``env`` (e.g. ``server = app_fixture("review_app", LIPSYNC_AUTH="u:p")``)."""
    import pytest

    @pytest.fixture(scope="module")
    def server(tmp_path_factory: pytest.TempPathFactory) -> AppServer:
        srv = start_app(tmp_path_factory.mktemp(name), **env)
        yield srv
        srv.stop()

    return server
