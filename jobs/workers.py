"""Generation (and the app's /score) in worker processes, so a crash in native code kills one
job, not the server.

:class:`WorkerPool` keeps up to ``size`` long-lived child processes (``python -m
jobs.workers``: a fresh interpreter, never a fork of the threaded server). Each loads its
face tracker and generator once, on its first job (or on :meth:`WorkerPool.start`), and
keeps them for the next, so isolation costs no reload per request. A job goes to an idle
worker over a socket pair; progress comes back over it; cancelling sends SIGUSR1, which sets
the flag the run loop polls. The workers share one GPU lane (``pipeline.device.gpu_lock``,
an ``flock`` on a file of the pool's): only one generator stage runs at a time.

When a worker dies mid-job (a segfault in a decoder or the generator, the OOM killer, a
kill from outside) the job fails with ``WorkerDied`` naming the signal and the last stage it
reported, the job's temp folder is removed, and the next job gets a fresh worker. A job
past its time limit that does not stop by itself (a hang inside native code, where the run
loop's own checks never come) is killed ``KILL_GRACE_S`` after the limit: ``JobTimeout``.
A worker whose server is gone (even killed with SIGKILL) exits within a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from jobs.executors import CancelFn, Executor, ProgressFn
from jobs.work import GenerationJob, ScoreJob, sendable_error
from pipeline.device import JOB_CORES_ENV, LANE_FILE_ENV, job_cores
from pipeline.errors import JobTimeout, WorkerDied
from pipeline.options import RunResult

log = logging.getLogger(__name__)

KILL_GRACE_S = 10.0  # seconds past a job's time limit before its worker is killed
POLL_S = 0.1  # how often the parent checks cancel, the deadline and the worker's health
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the project root, for the child's sys.path


class _Worker:
    """One child process and the parent's end of its socket pair."""

    def __init__(self, lane_file: str, threads: int) -> None:
        mine, theirs = socket.socketpair()
        # its share of the cores sizes torch's threads, the decoder's and scoring's in the worker
        # (pipeline.device.job_cores); LIPSYNC_TORCH_THREADS etc. still override each
        env = {**os.environ, LANE_FILE_ENV: lane_file, JOB_CORES_ENV: str(threads)}
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, str(threads))  # BLAS pools spin-wait: one per worker, sized to its share
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.fspath(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        # Its own process group: a worker that dies mid-job leaves ffmpeg children behind
        # (an encoder finishing a file in the job's scratch folder); stop() kills the group.
        self.proc = subprocess.Popen([sys.executable, "-m", "jobs.workers", str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        theirs.close()
        self.conn = Connection(mine.detach())
        self.ready = True  # False from sending a job until its answer is read: else the worker
        # may still be busy with it (e.g. the progress callback raised), and is killed, not reused

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        if self.alive():
            if kill:
                self.proc.kill()
            else:
                try:
                    self.conn.send(("stop",))
                except OSError:
                    self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it started and left running
        except (ProcessLookupError, PermissionError):
            pass  # none left
        self.conn.close()

    def death(self) -> str:
        """How the process ended, in words."""
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


class WorkerPool(Executor):
    """The ``workers`` executor: :func:`jobs.work.generate` in up to ``size`` worker
    processes at once; their GPU lane's lock file goes in ``lane_dir`` (default: temp)."""

    name = "workers"

    def __init__(self, size: int = 1, *, lane_dir: str | os.PathLike[str] | None = None) -> None:
        self.size = max(1, int(size))
        self._slots = threading.BoundedSemaphore(self.size)
        self._score_slots = threading.BoundedSemaphore(self.size)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()  # warm workers are reused first
        self._lock = threading.Lock()
        self._busy: set[_Worker] = set()
        self._closed = False
        # the cores shared out among the workers: each worker's job sizes its threads to its share
        self.threads = max(1, job_cores() // self.size)
        # the workers flock it around each generator stage (pipeline.device); a server keeps
        # it in its own work folder, which goes with the server (jobs/workspace.py)
        fd, self.lane_file = tempfile.mkstemp(prefix="gpu-lane-", suffix=".lock", dir=lane_dir)
        os.close(fd)

    @classmethod
    def create(cls, *, max_jobs: int, work_dir: str | None) -> WorkerPool:
        return cls(max_jobs, lane_dir=work_dir)

    def start(self) -> None:
        """Start every worker now and have it load its models (a server does this at launch)."""
        for _ in range(self.size - self._idle.qsize()):
            self._idle.put(self._warm_worker())

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().stop()
            except queue.Empty:
                break
        with self._lock:
            for w in self._busy:
                w.stop(kill=True)
        with contextlib.suppress(OSError):
            os.unlink(self.lane_file)

    def run(self, job: GenerationJob, *, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None) -> tuple[RunResult, Any]:
        """:func:`jobs.work.generate` in a worker: (RunResult, Scores or None)."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        options = job.options
        scratch = Path(options.work_dir or tempfile.gettempdir()) / f"job-{uuid.uuid4().hex[:12]}"
        scratch.mkdir(parents=True)
        job = replace(job, options=replace(options, work_dir=os.fspath(scratch)))
        with self._slots:
            worker = self._take()
            try:
                return self._run(worker, job, options.timeout_s, progress, cancel)
            finally:
                self._give_back(worker)
                shutil.rmtree(scratch, ignore_errors=True)

    def score(self, job: ScoreJob) -> dict[str, Any]:
        """:func:`jobs.work.score_job` in a worker (the uploads are decoded there, never in the
        server): a scorer that dies fails this request with ``WorkerDied``. Scoring has its own
        ``size`` slots, so it never waits behind generation; idle workers serve either."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        with self._score_slots:
            worker = self._take()
            try:
                return self._run(worker, job, job.timeout_s, None, None)[0]
            finally:
                self._give_back(worker)

    def _give_back(self, worker: _Worker) -> None:
        """An idle worker back to the pool; one that died or is unusable is replaced at once by
        a fresh one that loads its models now, so the next job does not pay for that."""
        with self._lock:
            self._busy.discard(worker)
        if worker.alive() and worker.ready and not self._closed:
            self._idle.put(worker)
            return
        worker.stop(kill=True)
        if not self._closed:
            self._idle.put(self._warm_worker())

    def _warm_worker(self) -> _Worker:
        w = _Worker(self.lane_file, self.threads)
        w.conn.send(("warm",))
        return w

    def _take(self) -> _Worker:
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                w = _Worker(self.lane_file, self.threads)
            if w.alive():
                with self._lock:
                    self._busy.add(w)
                return w
            log.warning("worker %d had died while idle (%s); starting another", w.pid, w.death())
            w.stop()

    def _run(self, w: _Worker, job: GenerationJob | ScoreJob, timeout_s: float | None,
             progress: ProgressFn | None, cancel: CancelFn | None) -> tuple[Any, Any]:
        what = "scoring" if isinstance(job, ScoreJob) else "generation"
        w.ready = False
        try:
            w.conn.send(("job", job))
        except OSError:  # it died between the health check and now
            raise WorkerDied(f"the {what} worker process died ({w.death()}) before the job "
                             "reached it; the next job gets a fresh worker") from None
        deadline = time.monotonic() + timeout_s + KILL_GRACE_S if timeout_s else None
        stage, cancel_sent = "start" if what == "generation" else "score", False
        while True:
            if cancel is not None and not cancel_sent and cancel():
                cancel_sent = True
                os.kill(w.pid, signal.SIGUSR1)
            if deadline is not None and time.monotonic() > deadline:
                w.stop(kill=True)
                raise JobTimeout(f"the job passed its {timeout_s:g} s time limit and did not stop (stage "
                                 f"'{stage}'): its worker process was killed")
            try:
                if not w.conn.poll(POLL_S):
                    if not w.alive():
                        raise EOFError
                    continue
                msg = w.conn.recv()
            except (EOFError, OSError):
                raise WorkerDied(f"the {what} worker process died ({w.death()}) during stage "
                                 f"'{stage}'; this job is lost, the next one gets a fresh worker") from None
            if msg[0] == "progress":
                stage = msg[1]
                if progress is not None:
                    progress(msg[1], msg[2])
            elif msg[0] == "done":
                w.ready = True
                return msg[1], msg[2]
            else:  # ("error", exception)
                w.ready = True
                raise msg[1]


# ---- the child's side ---------------------------------------------------------------------

def _serve(conn: Connection) -> None:
    from jobs.work import generate, score_job, warm_up  # the run loop: cv2, ffmpeg helpers

    cancelled = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: cancelled.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the server's terminal is the server's
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    send_lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(msg)

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        if msg[0] == "warm":
            warm_up()
            continue
        job = msg[1]
        cancelled.clear()
        work = score_job if isinstance(job, ScoreJob) else generate
        try:
            result, scores = work(job, progress=lambda s, f: send(("progress", s, f)),
                                  cancel=cancelled.is_set)
            send(("done", result, scores))
        except Exception as exc:  # noqa: BLE001 - handed to the parent, which records it
            send(("error", sendable_error(exc)))


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)  # the server is gone: nobody will read this job's result


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("LIPSYNC_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s worker %(process)d %(name)s: %(message)s")
    _serve(Connection(int(sys.argv[1])))
