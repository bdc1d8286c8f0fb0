"""The ``ray`` executor on a real multi-node Ray cluster (tests/ray_cluster.py: a head and two
worker nodes as separate raylets on this machine) with the real Serve deployments, ffmpeg,
dlib tracker and SQLite. Nothing is stubbed; the "GPUs" are declared resources only (no CUDA
here), so placement follows them as it would on GPU machines. Clips are 1 s long: two
shared cores run three raylets.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures_wav2lip import wav2lip_checkpoint  # noqa: F401 - a fixture
from ray_cluster import (ROOT, SimCluster, cluster, make_clips, read_events, shared_leftovers,  # noqa: F401
                         wait_for_event)
from jobs.settings import RaySettings, SettingsError, ray_settings_from_env, settings_from_env
from jobs.work import GenerationJob
from pipeline.errors import JobCancelled, LipSyncError
from pipeline.media.decode import read_frames
from pipeline.media.ffmpeg import ffmpeg_exe
from pipeline.options import RunOptions

BASELINE = RunOptions(model="baseline")
BIG = 100 * 10**6  # bytes of the data-path test's input


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_nothing_imports_ray_without_the_address(tmp_path: Path) -> None:
    """Settings, the service, the UI and a whole job without LIPSYNC_RAY_ADDRESS: no ray module."""
    code = ("import sys, os\n"
            "from jobs.settings import settings_from_env\n"
            "from jobs.service import open_service, run_job\n"
            "import ui.server, ui.blocks\n"
            "s = settings_from_env({'LIPSYNC_DATA_DIR': sys.argv[1], 'LIPSYNC_EXECUTOR': 'threads'})\n"
            "from dataclasses import replace\n"
            "s = replace(s, data_dir=__import__('pathlib').Path(sys.argv[1]))\n"
            "svc = open_service(s)\n"
            "assert svc.settings.executor == 'threads', svc.settings.executor\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_RAY")}
    env["PYTHONPATH"] = os.fspath(ROOT)
    out = subprocess.run([sys.executable, "-c", code, os.fspath(tmp_path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_ray_settings_choose_the_executor_and_reject_bad_values() -> None:
    s = settings_from_env({"LIPSYNC_RAY_ADDRESS": "auto", "LIPSYNC_RAY_RETRIES": "0",
                           "LIPSYNC_RAY_MAX_ONGOING": "3", "LIPSYNC_RAY_MIN_REPLICAS": "2",
                           "LIPSYNC_RAY_MAX_REPLICAS": "5"})
    assert s.executor == "ray" and s.ray is not None
    assert (s.ray.retries, s.ray.max_ongoing) == (0, 3)
    assert s.ray.replicas == {"min_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 1.0}
    assert settings_from_env({}).ray is None
    with pytest.raises(SettingsError, match="LIPSYNC_RAY_FALLBACK"):
        ray_settings_from_env({"LIPSYNC_RAY_ADDRESS": "auto", "LIPSYNC_RAY_FALLBACK": "maybe"})
    with pytest.raises(SettingsError, match="LIPSYNC_RAY_MAX_REPLICAS"):
        ray_settings_from_env({"LIPSYNC_RAY_ADDRESS": "auto", "LIPSYNC_RAY_MIN_REPLICAS": "3",
                               "LIPSYNC_RAY_MAX_REPLICAS": "2"})
    with pytest.raises(SettingsError, match="LIPSYNC_SHARED_DIR='/nonexistent/mnt' is not a folder"):
        ray_settings_from_env({"LIPSYNC_RAY_ADDRESS": "auto", "LIPSYNC_SHARED_DIR": "/nonexistent/mnt"})
    assert ray_settings_from_env({"LIPSYNC_RAY_ADDRESS": "auto", "LIPSYNC_SHARED_DIR": "/tmp"}).shared_dir == Path("/tmp")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_clips(tmp_path_factory.mktemp("ray_clips"), audio=1.0, audio2=1.0, long_audio=20.0,
                      speech_a=3.0, speech_b=3.0)


@pytest.fixture(scope="module")
def executor(cluster: SimCluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two Generation replicas (one job each at a time, one per worker node), and one Forward
    replica (one model copy on one declared GPU) that batches every job's frames."""
    from jobs.ray_executor import RayExecutor

    events = tmp_path_factory.mktemp("ray_events")
    ex = RayExecutor(RaySettings(address=cluster.address, min_replicas=2, max_replicas=2, max_ongoing=1,
                                 cpus=1, batch=True, forward_replicas=1, batch_size=32,
                                 batch_wait_s=0.2, events_dir=events))
    ex.connect()
    assert ex.health()[0], ex.health()
    yield ex
    ex.close()


@pytest.fixture
def on_shared(executor: Any, tmp_path: Path) -> Any:
    """The same application, called by an executor whose files travel as paths under a shared
    folder (``tmp_path / "shared"``: every node of this cluster sees this machine's disk)."""
    from jobs.ray_executor import RayExecutor

    ex = RayExecutor(replace(executor.settings, shared_dir=tmp_path / "shared", deploy=False))
    ex.connect()
    assert ex.health()[0], ex.health()
    yield ex
    ex.close()


def _job(clips: dict[str, Path], out: Path, job_id: str, *, audio: str = "audio", score: bool = False,
         options: RunOptions = BASELINE) -> GenerationJob:
    return GenerationJob.of(clips["video"], clips[audio], out / f"{job_id}.mp4", options=options,
                            job_id=job_id, score=score)


def test_three_jobs_on_two_replicas_use_two_nodes_and_the_third_waits(executor: Any, clips: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    jobs = [_job(clips, tmp_path, f"place-{i}", score=i == 0) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(executor.run, j) for j in jobs]
        time.sleep(0.05)
        results = [f.result(timeout=600) for f in futures]
    hosts = [r.host for r, _ in results]
    assert len({h["node_id"] for h in hosts}) == 2
    assert all(h["executor"] == "ray" for h in hosts)
    first_done = sorted(h["replica_finished"] for h in hosts)[0]
    last_start = sorted(h["replica_started"] for h in hosts)[-1]
    assert last_start >= first_done  # one job per replica at a time: the third waited for a slot
    assert results[0][1].value("psnr_full") > 20  # scored here, in the app process
    assert all(Path(j.output).stat().st_size > 0 for j in jobs)


def test_a_100_mb_input_round_trips_as_bytes(executor: Any, clips: dict[str, Path], tmp_path: Path) -> None:
    """The source is deleted before dispatch: the replica can only have the bytes sent."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(BIG))
    big = tmp_path / "big.mkv"  # the face clip with a 100 MB attachment: 100 MB on the wire, 1 s to decode
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", os.fspath(clips["video"]), "-attach", os.fspath(blob),
                    "-metadata:s:t", "mimetype=application/octet-stream", "-c", "copy", os.fspath(big)], check=True)
    blob.unlink()
    assert big.stat().st_size > BIG
    sent = _sha(big)
    job = GenerationJob.of(big, clips["audio"], tmp_path / "out.mp4", options=BASELINE, job_id="big", score=False)
    payload = executor.pack(job)
    big.unlink()
    reply = executor.dispatch(payload)
    assert reply.received["video"] == sent
    executor.save_outputs(reply, job)
    result, _ = executor.scored(reply, job)
    assert _sha(tmp_path / "out.mp4") == reply.outputs["video"].sha256
    assert result.frames == 25 and result.host["node_id"]


def _frames(path: Path) -> np.ndarray:
    return np.stack(list(read_frames(path)))


def test_two_jobs_frames_share_model_batches_and_match_single_runs(executor: Any, clips: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    from ray import serve

    forward = serve.get_deployment_handle("Forward", app_name=executor.settings.app_name)
    alone = [executor.run(_job(clips, tmp_path / "alone", f"alone-{i}", audio=a))[0]
             for i, a in enumerate(("audio", "long_audio"))]
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(executor.run, [_job(clips, tmp_path / "both", f"both-{i}", audio=a)
                                            for i, a in enumerate(("audio", "long_audio"))]))
    stats = forward.stats.remote().result(timeout_s=60)
    mixed = [b for b in stats["batches"] if {j for j, _ in b} == {"both-0", "both-1"}]
    assert mixed, stats["batches"][-10:]
    assert stats["loads"] == 1  # one model copy, built once
    for single, (shared, _) in zip(alone, both):  # frame-exact: the baseline's drawing is exact
        assert np.array_equal(_frames(Path(single.output_path)), _frames(Path(shared.output_path)))


def test_random_wav2lip_outputs_in_mixed_batches_match_single_runs(executor: Any, clips: dict[str, Path],
                                                                   wav2lip_checkpoint: Path, tmp_path: Path) -> None:
    """Random weights in the published format (tests/fixtures_wav2lip.py); lossless output
    (crf 0), so the only differences are the network's float rounding in other batch sizes."""
    from ray import serve

    forward = serve.get_deployment_handle("Forward", app_name=executor.settings.app_name)
    opts = RunOptions(model="wav2lip", checkpoint=os.fspath(wav2lip_checkpoint), crf=0)
    with ThreadPoolExecutor(2) as pool:  # warm-up: each Generation replica imports torch and resolves the weights
        list(pool.map(executor.run, [_job(clips, tmp_path / "warm", f"w2l-warm-{i}", audio=a, options=opts)
                                     for i, a in enumerate(("audio", "audio2"))]))
    audios = ("speech_a", "speech_b")
    alone = [executor.run(_job(clips, tmp_path / "alone", f"w2l-alone-{i}", audio=a, options=opts))[0]
             for i, a in enumerate(audios)]
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(executor.run, [_job(clips, tmp_path / "both", f"w2l-both-{i}", audio=a, options=opts)
                                            for i, a in enumerate(audios)]))
    batches = forward.stats.remote().result(timeout_s=60)["batches"]
    assert any({j for j, _ in b} == {"w2l-both-0", "w2l-both-1"} for b in batches), batches[-10:]
    for single, (shared, _) in zip(alone, both):
        assert single.model_used == shared.model_used == "wav2lip"
        a, b = _frames(Path(single.output_path)), _frames(Path(shared.output_path))
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2, rtol=0)


def test_cancel_reaches_the_replica_and_frees_its_slot(executor: Any, on_shared: Any, clips: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """The cancelled job's files go through the shared folder: nothing of it stays there."""
    flag = threading.Event()
    job = _job(clips, tmp_path, "cancel-me", audio="long_audio")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            on_shared.run(job, cancel=flag.is_set)
        except JobCancelled as exc:
            outcome["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    started = wait_for_event(executor.settings.events_dir, "started", "cancel-me")
    time.sleep(1.0)
    flag.set()
    t.join(timeout=120)
    assert isinstance(outcome.get("error"), JobCancelled), outcome
    marker = wait_for_event(executor.settings.events_dir, "cancelled", "cancel-me", timeout=60)
    assert marker["node_id"] == started["node_id"] and marker["replica"] == started["replica"]
    assert marker["killed_pids"]  # the job's encoders were running: their process groups were killed
    assert not Path(job.output).exists()
    assert shared_leftovers(on_shared.settings.shared_dir, settle_s=30) == []
    # both replicas take a job at once: the cancelled one's only slot is free again
    with ThreadPoolExecutor(2) as pool:
        after = list(pool.map(executor.run, [_job(clips, tmp_path, f"after-{i}") for i in range(2)]))
    assert started["node_id"] in {r.host["node_id"] for r, _ in after}
    assert len([e for e in read_events(executor.settings.events_dir) if e["event"] == "cancelled"]) == 1


def test_files_travel_through_the_shared_folder_and_nothing_of_a_job_stays_there(
        on_shared: Any, clips: dict[str, Path], tmp_path: Path) -> None:
    """Inputs (the user's own shared file read in place, another copied), replies as paths;
    after a job, and after a failed one, the shared folder holds only the user's file."""
    shared = on_shared.settings.shared_dir
    own = shared / "mine" / "face.mp4"
    own.parent.mkdir(parents=True)
    own.write_bytes(clips["video"].read_bytes())
    job = GenerationJob.of(own, clips["audio"], tmp_path / "out.mp4", options=BASELINE, job_id="shared",
                           score=False, side_by_side=tmp_path / "sbs.mp4")
    payload = on_shared.pack(job)
    assert payload.video.path == os.fspath(own) and payload.audio.data is None
    reply = on_shared.dispatch(payload)
    assert all(b.data is None and Path(b.path).parent == payload.reply_dir for b in reply.outputs.values())
    on_shared.save_outputs(reply, job)
    payload.remove_shared()
    assert _sha(tmp_path / "sbs.mp4") == reply.outputs["side_by_side"].sha256
    assert shared_leftovers(shared) == ["mine", "mine/face.mp4"]

    result, _ = on_shared.run(replace(job, job_id="shared-run", output=os.fspath(tmp_path / "run.mp4")))
    assert Path(result.output_path).stat().st_size > 0
    assert shared_leftovers(shared) == ["mine", "mine/face.mp4"]  # the replies saved, the job's folder went

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a sound at all")
    with pytest.raises(LipSyncError):
        on_shared.run(GenerationJob.of(clips["video"], bad, tmp_path / "bad.mp4", options=BASELINE,
                                       job_id="shared-bad", score=False))
    assert shared_leftovers(shared) == ["mine", "mine/face.mp4"]
