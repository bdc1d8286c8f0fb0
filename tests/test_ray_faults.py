"""Lost nodes on a real multi-node Ray cluster (tests/ray_cluster.py): a worker node is
removed at once (``remove_node(allow_graceful=False)``: its raylet and every process on it
die, as when a machine is lost) while it runs a job. Real Serve deployments, ffmpeg, dlib and
SQLite; the declared GPUs put one Generation replica on each worker node. The jobs' files
travel through a shared folder (``LIPSYNC_SHARED_DIR``; this machine's disk): a re-run finds
its inputs there, and nothing of a job stays there once it has ended, re-run or failed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ray_cluster import SimCluster, cluster, make_clips, shared_leftovers, wait_for_event  # noqa: F401
from jobs.lifecycle import run_recorded
from jobs.settings import RaySettings
from jobs.work import GenerationJob
from pipeline.errors import NodeLost
from pipeline.options import RunOptions
from storage.jobs import JobStore

BASELINE = RunOptions(model="baseline")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_clips(tmp_path_factory.mktemp("fault_clips"), audio=1.0, long=12.0)


def _executor(cluster: SimCluster, events: Path, *, retries: int, deploy: bool = True,
              shared: Path | None = None) -> Any:
    from jobs.ray_executor import RayExecutor

    ex = RayExecutor(RaySettings(address=cluster.address, retries=retries, min_replicas=2, max_replicas=2,
                                 max_ongoing=1, batch=False, events_dir=events, deploy=deploy,
                                 shared_dir=shared))
    ex.connect()
    assert ex.health()[0], ex.health()
    return ex


def _job(clips: dict[str, Path], out: Path, job_id: str, audio: str = "long") -> GenerationJob:
    return GenerationJob.of(clips["video"], clips[audio], out / f"{job_id}.mp4", options=BASELINE,
                            job_id=job_id, score=False)


def test_a_job_on_a_lost_node_is_rerun_on_the_survivor(cluster: SimCluster, clips: dict[str, Path],
                                                       tmp_path: Path) -> None:
    events, shared = tmp_path / "events", tmp_path / "shared"
    ex = _executor(cluster, events, retries=1, shared=shared)
    with ThreadPoolExecutor(2) as pool:
        lost = pool.submit(ex.run, _job(clips, tmp_path, "lost"))
        other = pool.submit(ex.run, _job(clips, tmp_path, "other"))
        victim = wait_for_event(events, "started", "lost")["node_id"]
        survivor = wait_for_event(events, "started", "other")["node_id"]
        assert victim != survivor
        cluster.kill(cluster.node_of(victim))
        rerun, _ = lost.result(timeout=600)
        finished, _ = other.result(timeout=600)
    assert rerun.host["attempt"] == 2 and rerun.host["node_id"] == survivor
    assert Path(rerun.output_path).stat().st_size > 0
    assert finished.host["node_id"] == survivor and finished.host["attempt"] == 1
    assert shared_leftovers(shared) == []
    new, _ = ex.run(_job(clips, tmp_path, "new", audio="audio"))
    assert new.host["node_id"] == survivor
    ex.close()


def test_without_retries_a_lost_node_fails_the_job_with_its_reason(cluster: SimCluster, clips: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """A new worker node joins (Serve starts the lost replica there); then it is lost too."""
    cluster.workers.append(cluster.cluster.add_node(num_cpus=1, num_gpus=1,
                                                    object_store_memory=150 * 2**20))
    cluster.cluster.wait_for_nodes()
    events, shared = tmp_path / "events", tmp_path / "shared"
    ex = _executor(cluster, events, retries=0, shared=shared)  # redeploys: both replicas up again
    store = JobStore(tmp_path / "jobs.db", data_dir=tmp_path)
    ids: list[str] = []
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            run_recorded(clips["video"], clips["long"], tmp_path / "out.mp4", options=BASELINE, store=store,
                         executor=ex, score=False, on_job_id=ids.append)
        except NodeLost as exc:
            outcome["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    while not ids:
        t.join(0.05)
    victim = wait_for_event(events, "started", ids[0])["node_id"]
    cluster.kill(cluster.node_of(victim))
    t.join(timeout=600)
    assert "the generation node was lost" in str(outcome.get("error"))
    job = store.get(ids[0])
    assert job["status"] == "failed" and job["error_type"] == "NodeLost"
    assert "the generation node was lost" in job["error_message"]
    assert job["device"]["executor"] == "ray"
    assert shared.is_dir() and shared_leftovers(shared) == []  # the failed job's folder went
    survivor_job, _ = ex.run(_job(clips, tmp_path, "after", audio="audio"))  # the app keeps serving
    assert survivor_job.host["node_id"] != victim
    ex.close()
