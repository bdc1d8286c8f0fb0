"""A real multi-node Ray cluster on one machine for the ``ray`` executor's tests.

``ray.cluster_utils.Cluster`` starts a head node and worker nodes as separate raylets (their
own processes, object stores and node ids) on this host. The head declares no CPU and no
GPU (it holds Serve's controller, which asks for neither), so every replica lands on a
worker node, which a test may then kill; each worker declares ``num_cpus=1`` and
``num_gpus=1`` (declared, not present: nothing here touches CUDA). Health checks are tuned so
a killed node is noticed within seconds, object stores are small, and token authentication
is disabled explicitly (``RAY_AUTH_MODE=disabled``: a local test cluster on 127.0.0.1; the
README says what to set on a real one).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import media
from required import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
OBJECT_STORE = 150 * 2**20  # bytes per node: small, but room for a 100 MB input
FAST_HEALTH = {  # a dead node is declared dead after ~3 s instead of ~30 s
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
WAIT_S = 240.0  # generous: two shared cores start three raylets and the replicas


def ray_env() -> None:
    """What every test process sets before Ray starts: no token auth, the project importable."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.fspath(ROOT), os.environ.get("PYTHONPATH")) if p)


def need_ray() -> Any:
    try:
        import ray
    except ImportError:
        skip_or_fail("ray[serve] is not installed (requirements-ray.txt)")
    return ray


@dataclass
class SimCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    workers: list[Any]  # the worker nodes (ray._private.node.Node)

    @property
    def address(self) -> str:
        return self.cluster.address

    def node_of(self, node_id: str) -> Any:
        return next(n for n in self.workers if n.node_id == node_id)

    def kill(self, node: Any) -> None:
        """Remove ``node`` at once (its raylet and every worker process die: a lost machine)."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)


@contextlib.contextmanager
def sim_cluster(workers: int = 2) -> Iterator[SimCluster]:
    """Head (no CPU, no GPU) + ``workers`` nodes (1 CPU, 1 GPU declared); always torn down."""
    need_ray()
    ray_env()
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "object_store_memory": OBJECT_STORE, "_system_config": FAST_HEALTH})
    try:
        nodes = [cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=OBJECT_STORE)
                 for _ in range(workers)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="lipsync", log_to_driver=False)
        yield SimCluster(cluster, nodes)
    finally:
        disconnect()
        cluster.shutdown()


def disconnect() -> None:
    """Shut Serve down, leave the cluster, and forget Serve's cached client: after a node
    loss ``serve.shutdown`` may find it unreachable and keep it, and the next cluster in this
    process would then wait forever on the old cluster's controller."""
    import ray
    from ray import serve
    from ray.serve import context

    with contextlib.suppress(Exception):
        serve.shutdown()
    context._set_global_client(None)  # private in Ray 2.60; tests only (one cluster per app process)
    ray.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimCluster]:
    """A module's cluster (import this fixture by name)."""
    need_ray()
    with sim_cluster() as c:
        yield c


def make_clips(folder: Path, **speech_seconds: float) -> dict[str, Path]:
    """``video``: a 1 s face clip; one speech track per ``name=seconds`` (its own seed each)."""
    out = {"video": media.face_video(folder / "face.mp4", seconds=1.0)}
    for seed, (name, seconds) in enumerate(speech_seconds.items()):
        out[name] = media.write_wav(folder / f"{name}.wav", media.speech_like(seconds, seed=seed))
    return out


def read_events(folder: Path) -> list[dict[str, Any]]:
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_event(folder: Path, kind: str, job_id: str, *, timeout: float = WAIT_S,
                   attempt: int | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in read_events(folder):
            if e["event"] == kind and e["job_id"] == job_id and (attempt is None or e["attempt"] == attempt):
                return e
        time.sleep(0.1)
    pytest.fail(f"no {kind!r} event for job {job_id} within {timeout:.0f} s: {read_events(folder)}")


def shared_leftovers(folder: Path, *, settle_s: float = 0.0) -> list[str]:
    """Everything under the shared ``folder`` (relative paths, sorted); with ``settle_s``, what
    is left after waiting up to that long for it to empty (a cancelled replica cleans up on
    its own time, after the app has its answer)."""
    deadline = time.monotonic() + settle_s
    while True:
        left = sorted(os.fspath(p.relative_to(folder)) for p in Path(folder).rglob("*"))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)
