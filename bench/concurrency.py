"""Jobs per second at 1, 2 and 4 concurrent gradio_client clients against a real server.

    .venv/bin/python bench/concurrency.py [--jobs 4] [--levels 1 2 4] [--seconds 2] [--model baseline]

Starts ``python app.py`` (tests/app_server.py) on a free loopback port with a tmp data
folder and ``LIPSYNC_MAX_JOBS`` (default 4), cuts ``--seconds`` of the shared media
(hdtf_aoc_512.mp4 and speech_44k.mp3) and runs one warm-up job. Then, per level, a fixed
number of jobs is shared among that many client threads; it prints jobs/s, the per-core CPU
busy percentage (psutil.cpu_percent(percpu=True) sampled every 0.5 s during the level),
the server's own CPU use (its process, its generation workers and their ffmpeg children,
100% = one core),
the throughput ratios 2v1 and 4v1, the server's peak RSS and the load average (the machine
may be shared). Bar on a 2-core machine: 2 clients >= 1.5x one, or both cores >= 90% busy.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from common import ROOT, media_dir

sys.path.insert(0, str(ROOT / "tests"))
from app_server import AppServer, start_app  # noqa: E402  (tests/app_server.py)
from gradio_client import Client, handle_file  # noqa: E402

from pipeline.media.ffmpeg import ffmpeg_exe  # noqa: E402

SAMPLE_S = 0.5


@dataclass(frozen=True)
class Level:
    clients: int
    jobs: int
    wall_s: float
    failures: int
    cpu_per_core: tuple[float, ...]  # mean busy % per core during the level (whole machine)
    server_cpu: float  # CPU % of the server, its workers and their ffmpeg children (100 = one core)

    @property
    def jobs_per_s(self) -> float:
        return (self.jobs - self.failures) / self.wall_s


class Sampler:
    """Samples per-core CPU busy % and the server's RSS (with its ffmpeg children) in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[list[float]] = []
        self.peak_rss = 0
        self.peak_rss_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        psutil.cpu_percent(percpu=True)
        while not self._stop.wait(SAMPLE_S):
            self.samples.append(psutil.cpu_percent(percpu=True))
            self.sample_rss()

    def sample_rss(self) -> None:
        try:
            rss = self.proc.memory_info().rss
            tree = rss + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
        except psutil.Error:
            return
        self.peak_rss, self.peak_rss_tree = max(self.peak_rss, rss), max(self.peak_rss_tree, tree)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mean_per_core(self) -> tuple[float, ...]:
        if not self.samples:
            return ()
        return tuple(sum(col) / len(col) for col in zip(*self.samples))


def cut_media(folder: Path, seconds: float) -> tuple[Path, Path]:
    src = media_dir()
    video, audio = folder / "face.mp4", folder / "speech.wav"
    base = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run([*base, "-i", str(src / "hdtf_aoc_512.mp4"), "-t", str(seconds), "-an", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(video)], check=True)
    subprocess.run([*base, "-i", str(src / "speech_44k.mp3"), "-t", str(seconds), str(audio)], check=True)
    return video, audio


def tree_cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of ``proc``, its live descendants (the generation workers, their running
    ffmpeg) and the children each has waited for (ffmpeg processes that finished)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue  # ended between the listing and the read
        total += t.user + t.system + t.children_user + t.children_system
    return total


def run_level(server: AppServer, clients: int, jobs: int, video: Path, audio: Path, model: str,
              peak: Sampler) -> Level:
    todo: queue.Queue[int] = queue.Queue()
    for i in range(jobs):
        todo.put(i)
    failures: list[str] = []
    conns = [Client(server.url, verbose=False) for _ in range(clients)]

    def worker(client: Client) -> None:
        while True:
            try:
                todo.get_nowait()
            except queue.Empty:
                return
            try:
                client.predict(handle_file(str(video)), handle_file(str(audio)), model, "{}", api_name="/lipsync")
            except Exception as exc:  # noqa: BLE001 - counted and shown
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
    with Sampler(server.process.pid) as cpu:
        cpu0 = tree_cpu_s(cpu.proc)
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        server_cpu = 100 * (tree_cpu_s(cpu.proc) - cpu0) / wall
    peak.peak_rss = max(peak.peak_rss, cpu.peak_rss)
    peak.peak_rss_tree = max(peak.peak_rss_tree, cpu.peak_rss_tree)
    for f in failures[:3]:
        print(f"  failure: {f[:200]}")
    return Level(clients=clients, jobs=jobs, wall_s=wall, failures=len(failures),
                 cpu_per_core=cpu.mean_per_core(), server_cpu=server_cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4, help="jobs per level (fixed)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seconds", type=float, default=2.0, help="length of the cut media")
    ap.add_argument("--model", default="baseline")
    ap.add_argument("--max-jobs", type=int, default=4, help="LIPSYNC_MAX_JOBS of the server")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lipsync-bench-") as tmp:
        folder = Path(tmp)
        video, audio = cut_media(folder, args.seconds)
        server = start_app(folder, LIPSYNC_MAX_JOBS=str(args.max_jobs), LIPSYNC_LOG_LEVEL="WARNING")
        try:
            peak = Sampler(server.process.pid)
            load_before = os.getloadavg()
            Client(server.url, verbose=False).predict(handle_file(str(video)), handle_file(str(audio)),
                                                      args.model, "{}", api_name="/lipsync")  # warm-up
            peak.sample_rss()
            levels = [run_level(server, c, args.jobs, video, audio, args.model, peak) for c in args.levels]
            load_after = os.getloadavg()
        finally:
            server.stop()

    print(f"server: LIPSYNC_MAX_JOBS={args.max_jobs}, model {args.model}, {args.seconds:g} s of "
          f"hdtf_aoc_512.mp4 (512x512) + speech_44k.mp3, {args.jobs} jobs per level, "
          f"{psutil.cpu_count()} cores")
    print(f"{'clients':>7} {'jobs':>4} {'failed':>6} {'wall s':>7} {'jobs/s':>7} {'server cpu %':>12}  machine cpu busy % per core")
    for lv in levels:
        cores = " ".join(f"{c:5.1f}" for c in lv.cpu_per_core)
        print(f"{lv.clients:7d} {lv.jobs:4d} {lv.failures:6d} {lv.wall_s:7.2f} {lv.jobs_per_s:7.3f} {lv.server_cpu:12.0f}  {cores}")
    by = {lv.clients: lv for lv in levels}
    if 1 in by:
        for c in (2, 4):
            if c in by:
                print(f"throughput ratio {c}v1: {by[c].jobs_per_s / by[1].jobs_per_s:.2f}x")
    if 2 in by and 1 in by:
        ratio = by[2].jobs_per_s / by[1].jobs_per_s
        busy = min(by[2].cpu_per_core or (0.0,))
        verdict = "PASS" if ratio >= 1.5 or busy >= 90 else "FAIL"
        print(f"bar (2 clients >= 1.5x one, or both cores >= 90% busy): {verdict} "
              f"(ratio {ratio:.2f}x, least busy core at 2 clients {busy:.0f}%)")
    print(f"server peak RSS: {peak.peak_rss / 2**20:.0f} MiB (with ffmpeg children: "
          f"{peak.peak_rss_tree / 2**20:.0f} MiB)")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}; "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}")


if __name__ == "__main__":
    main()
