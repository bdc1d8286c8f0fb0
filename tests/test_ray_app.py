"""The app with ``LIPSYNC_RAY_ADDRESS``: a real ``python app.py`` (gradio_client calls it) in
front of real ``ray start`` processes that the tests start and stop by process group.
``RAY_AUTH_MODE=disabled`` explicitly: a local cluster on this machine (README, "Scale out",
says what to set on a real one). No stubs; the baseline generator (no weights here).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from app_server import free_port, start_app
from ray_cluster import ROOT, disconnect, make_clips, need_ray, ray_env, shared_leftovers, wait_for_event
from jobs.settings import RaySettings
from jobs.work import GenerationJob
from pipeline.options import RunOptions
from storage.jobs import JobStore

START_S = 120.0


def _ray_bin() -> str:
    return os.fspath(Path(sys.executable).parent / "ray")


@contextlib.contextmanager
def ray_start(tmp: Path, name: str, *args: str) -> Iterator[subprocess.Popen]:
    """``ray start ARGS --block`` in its own process group; killed (group) on exit."""
    log = open(tmp / f"{name}.log", "wb")
    head = ["--include-dashboard=false"] if "--head" in args else []  # a worker refuses the option
    proc = subprocess.Popen([_ray_bin(), "start", "--block", "--disable-usage-stats", *head, *args], env=dict(os.environ), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for child in _leftovers(proc.pid):  # raylets reparented away from the group: by pid
            with contextlib.suppress(psutil.Error):
                child.kill()


def _leftovers(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if os.getpgid(p.pid) == pgid:
                out.append(p)
    return out


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.3)
    pytest.fail(f"the Ray head did not listen on {port} within {START_S:.0f} s")


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "readyz", timeout=10) as r:  # noqa: S310 - local server
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_ready(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = _readyz(url)
        if status == 200:
            return body
        time.sleep(1)
    pytest.fail(f"/readyz never 200: {body}")


def _head_node_id(address: str) -> str:
    code = ("import ray; ray.init(address=%r, log_to_driver=False); "
            "print(ray.get_runtime_context().get_node_id())" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=dict(os.environ))
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_clips(tmp_path_factory.mktemp("ray_app_clips"), audio=1.0, long=12.0)


def test_the_app_runs_a_job_on_the_cluster_and_records_the_node(tmp_path: Path, clips: dict[str, Path]) -> None:
    from gradio_client import Client, handle_file

    need_ray()
    ray_env()
    port = free_port()
    with ray_start(tmp_path, "head", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0"):
        _wait_port(port)
        address = f"127.0.0.1:{port}"
        shared = tmp_path / "shared"  # uploads travel as paths under it, and go once the job has ended
        dead = shared / "job-0123456789ab"  # left two days ago by an app that died mid-job: swept at start
        dead.mkdir(parents=True)
        os.utime(dead, (time.time() - 2 * 86400,) * 2)
        server = start_app(tmp_path, LIPSYNC_RAY_ADDRESS=address, LIPSYNC_RAY_MIN_REPLICAS="1",
                           LIPSYNC_RAY_MAX_REPLICAS="1", LIPSYNC_RAY_CPUS="1", LIPSYNC_SHARED_DIR=os.fspath(shared))
        try:
            body = _wait_ready(server.url)
            assert "Ray cluster at" in body["checks"]["executor"]["detail"]
            client = Client(server.url, verbose=False)
            video, _, scores, job_id = client.predict(handle_file(str(clips["video"])), handle_file(str(clips["audio"])),
                                                      "baseline", "{}", api_name="/lipsync")
            assert Path(video).stat().st_size > 0 and scores["scores"]["psnr_full"]["value"] > 20
            job = JobStore(server.db_path, data_dir=server.data_dir).get(job_id)
            assert job["status"] == "succeeded"
            assert job["device"]["executor"] == "ray"
            assert job["device"]["node_id"] == _head_node_id(address)
            assert shared.is_dir() and shared_leftovers(shared) == []  # the dead app's folder and this job's are gone
        finally:
            server.stop()


def test_an_unreachable_cluster_fails_readyz_and_refuses_jobs(tmp_path: Path, clips: dict[str, Path]) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    need_ray()
    ray_env()
    server = start_app(tmp_path, LIPSYNC_RAY_ADDRESS=f"127.0.0.1:{free_port()}")
    try:
        deadline = time.monotonic() + 60
        while True:
            status, body = _readyz(server.url)
            if "unreachable" in body["checks"]["executor"]["detail"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 503 and "is unreachable" in body["checks"]["executor"]["detail"]
        client = Client(server.url, verbose=False)
        with pytest.raises(AppError, match="ClusterUnavailable"):
            client.predict(handle_file(str(clips["video"])), handle_file(str(clips["audio"])), "baseline", "{}",
                           api_name="/lipsync")
        failed = JobStore(server.db_path, data_dir=server.data_dir).list(status="failed")
        assert failed and failed[0]["error_type"] == "ClusterUnavailable"
        assert "Traceback" not in failed[0]["error_message"]
    finally:
        server.stop()


def _raylet_of(proc: subprocess.Popen) -> psutil.Process:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == "raylet":
                    return child
        time.sleep(0.3)
    pytest.fail("no raylet under the `ray start` process")


@pytest.mark.slow
def test_sigkill_of_a_worker_raylet_reruns_the_job(tmp_path: Path, clips: dict[str, Path]) -> None:
    """Three `ray start` processes (a head without CPUs, two workers with one CPU and one
    declared GPU each); the raylet of the worker running the job gets SIGKILL by its PID."""
    from jobs.ray_executor import RayExecutor

    need_ray()
    ray_env()
    port = free_port()
    address = f"127.0.0.1:{port}"
    events = tmp_path / "events"
    with contextlib.ExitStack() as stack:
        stack.enter_context(ray_start(tmp_path, "head", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0"))
        _wait_port(port)
        stack.callback(disconnect)  # runs before the `ray start` processes stop (LIFO)
        raylets = []
        for i in range(2):  # one at a time: a raylet that cannot register within Ray's 30 s gives up
            worker = stack.enter_context(ray_start(tmp_path, f"worker{i}", f"--address={address}", "--num-cpus=1",
                                                   "--num-gpus=1"))
            raylets.append(_raylet_of(worker))
            _wait_for_gpus(address, i + 1)  # registered: the deployment sizes itself on both
        ex = RayExecutor(RaySettings(address=address, min_replicas=2, max_replicas=2, max_ongoing=1, batch=False,
                                     events_dir=events))
        stack.callback(ex.close)
        ex.connect()
        assert ex.health()[0], ex.health()
        job = GenerationJob.of(clips["video"], clips["long"], tmp_path / "out.mp4",
                               options=RunOptions(model="baseline"), job_id="sigkill", score=False)
        outcome: dict[str, Any] = {}
        t = threading.Thread(target=lambda: outcome.update(result=ex.run(job)[0]))
        t.start()
        victim = wait_for_event(events, "started", "sigkill")["pid"]
        raylet = next(r for r in raylets if victim in {c.pid for c in r.children(recursive=True)})
        raylet.send_signal(signal.SIGKILL)
        t.join(timeout=600)
        result = outcome["result"]
        assert result.host["attempt"] == 2 and result.host["pid"] != victim
        assert Path(result.output_path).stat().st_size > 0


def _wait_for_gpus(address: str, n: int) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace="lipsync", log_to_driver=False)
    deadline = time.monotonic() + START_S
    while ray.cluster_resources().get("GPU", 0) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"the worker nodes did not register within {START_S:.0f} s: {ray.cluster_resources()}")
        time.sleep(0.5)
