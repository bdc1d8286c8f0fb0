"""Jobs/s on a simulated Ray cluster with 2 Generation replicas against 1, in the same run.

    .venv/bin/python bench/ray_scaling.py [--jobs 6] [--seconds 2] [--rounds 1]

Starts ``ray.cluster_utils.Cluster`` on this machine (tests/ray_cluster.py: a head without
CPUs and two worker nodes with one CPU and one declared GPU each, so each replica gets a
node of its own), deploys the Serve application with one replica, runs ``--jobs`` baseline
jobs at once through the ``ray`` executor, redeploys it with two replicas and runs the same
jobs again (``--rounds`` alternations). Each worker node's raylet and every process under it
(replicas, their ffmpeg children, which inherit it) is pinned to a core of its own
(``--no-pin`` leaves them floating), so "one CPU per node" holds in fact, not only in Ray's
bookkeeping. Prints jobs/s of each, the ratio (goal >= 1.7x), the
replicas' and this process's peak RSS, and the load average: on a machine whose cores are
shared the ratio says more about the neighbours than about Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1] / "tests"))
from common import peak_rss_mb  # noqa: E402

import media  # noqa: E402  (tests/media.py: synthetic face and speech)
from ray_cluster import sim_cluster  # noqa: E402

from jobs.settings import RaySettings  # noqa: E402
from jobs.work import GenerationJob  # noqa: E402
from pipeline.options import RunOptions  # noqa: E402

log = logging.getLogger("bench.ray_scaling")


def pin_nodes(workers: list[object]) -> None:
    """Pin worker node i's raylet and its processes to core i (of this process's cores)."""
    import psutil

    cores = sorted(os.sched_getaffinity(0))
    for i, node in enumerate(workers):
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        for proc in [raylet, *raylet.children(recursive=True)]:
            proc.cpu_affinity([cores[i % len(cores)]])
        log.info("worker node %d pinned to core %d", i, cores[i % len(cores)])


def run_level(address: str, replicas: int, jobs: list[GenerationJob]) -> tuple[float, float]:
    """(jobs/s, the replicas' peak RSS in MB) with ``replicas`` Generation replicas."""
    from jobs.ray_executor import RayExecutor

    ex = RayExecutor(RaySettings(address=address, min_replicas=replicas, max_replicas=replicas, max_ongoing=1,
                                 batch=False))
    ex.connect()
    if not ex.health()[0]:
        sys.exit(ex.health()[1])
    with ThreadPoolExecutor(replicas) as pool:  # warm-up: one untimed job per replica
        list(pool.map(ex.run, jobs[:replicas]))
    start = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(ex.run, jobs))
    elapsed = time.perf_counter() - start
    nodes = {r.host["node_id"] for r, _ in results}
    log.info("%d replica(s): %d jobs in %.1f s on %d node(s)", replicas, len(jobs), elapsed, len(nodes))
    ex.close()
    return len(jobs) / elapsed, max(r.host.get("peak_rss_mb") or 0.0 for r, _ in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="leave the nodes' processes on every core")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    video = media.face_video(tmp / "face.mp4", seconds=args.seconds)
    audio = media.write_wav(tmp / "speech.wav", media.speech_like(args.seconds))
    jobs = [GenerationJob.of(video, audio, tmp / f"out-{i}.mp4", options=RunOptions(model="baseline"),
                             job_id=f"bench-{i}", score=False) for i in range(args.jobs)]
    rates: dict[int, list[float]] = {1: [], 2: []}
    rss = 0.0
    with sim_cluster(workers=2) as cluster:
        if not args.no_pin:
            pin_nodes(cluster.workers)
        for _ in range(args.rounds):
            for replicas in (1, 2):
                rate, peak = run_level(cluster.address, replicas, jobs)
                rates[replicas].append(rate)
                rss = max(rss, peak)
    one, two = (sum(rates[k]) / len(rates[k]) for k in (1, 2))
    print(f"jobs/s, 1 replica : {one:.3f}")
    print(f"jobs/s, 2 replicas: {two:.3f}")
    print(f"ratio 2v1         : {two / one:.2f}x (goal >= 1.7x)")
    print(f"peak RSS: replica {rss:.0f} MB, this process {peak_rss_mb():.0f} MB")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores (shared)")


if __name__ == "__main__":
    main()
