"""A bounded load test on a real ``python app.py`` (issue 7): loopback only, fixed work, time limit.

4 concurrent ``gradio_client`` clients make 40 /lipsync submissions in total (10 each, tiny
synthetic media, the baseline generator: no weights can exist here). The server allows one
generation job at a time and one waiting event (LIPSYNC_MAX_JOBS=1, LIPSYNC_QUEUE_SIZE=1), so
with four clients some submissions are refused with Gradio's queue-full message. Checked:
every accepted submission has exactly one job row and it reached a terminal state
(succeeded), refused ones left no row, no job id is returned twice, and the server's resident
memory after the run is within 10% of its level after the warm-up jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from gradio_client import Client, handle_file

import media
from app_server import AppServer, start_app
from storage.jobs import JobStore
from storage.records import TERMINAL

log = logging.getLogger(__name__)

CLIENTS = 4
JOBS_PER_CLIENT = 10  # 40 submissions in total
RESULT_TIMEOUT_S = 60.0  # one job, client-side
RUN_LIMIT_S = 150.0  # the whole load run
REFUSED_BACKOFF_S = 0.3  # a refused client waits this long before its next submission
SETTLE_S = 3.0  # seconds given to the server to free per-job memory before measuring
RSS_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> AppServer:
    srv = start_app(tmp_path_factory.mktemp("load_app"), LIPSYNC_MAX_JOBS="1", LIPSYNC_QUEUE_SIZE="1")
    yield srv
    srv.stop()


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


class Tally:
    """Outcomes of every submission, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: list[str] = []  # job ids returned
        self.refused: list[str] = []  # queue-full messages
        self.other: list[str] = []  # anything else: a failure of the test

    def add(self, kind: str, value: str) -> None:
        with self.lock:
            getattr(self, kind).append(value)


def _client_loop(url: str, video: Path, audio: Path, tally: Tally, deadline: float) -> None:
    client = Client(url, verbose=False)
    for _ in range(JOBS_PER_CLIENT):
        if time.monotonic() > deadline:
            tally.add("other", "run limit reached before this submission")
            continue
        try:
            job = client.submit(handle_file(str(video)), handle_file(str(audio)), "baseline", "{}",
                                api_name="/lipsync")
            tally.add("accepted", job.result(timeout=RESULT_TIMEOUT_S)[3])
        except Exception as exc:  # noqa: BLE001 - sorted into refused / other below
            message = f"{type(exc).__name__}: {exc}"
            if "queue is full" in message.lower():
                tally.add("refused", message)
                time.sleep(REFUSED_BACKOFF_S)
            else:
                tally.add("other", message)


def test_four_clients_forty_jobs(server: AppServer, client: Client, store: JobStore,
                                 tmp_path: Path) -> None:
    video = media.face_video(tmp_path / "face.mp4", seconds=0.4)
    audio = media.write_wav(tmp_path / "speech.wav", media.speech_like(0.4))
    for _ in range(2):  # warm-up: tracker, audio front end, encoder paths loaded
        client.predict(handle_file(str(video)), handle_file(str(audio)), "baseline", "{}",
                       api_name="/lipsync")
    time.sleep(SETTLE_S)
    rss_start = _rss_mb(server.process.pid)
    before = {j["id"] for j in store.list(limit=None)}

    tally = Tally()
    t0 = time.monotonic()
    threads = [threading.Thread(target=_client_loop, args=(server.url, video, audio, tally,
                                                            t0 + RUN_LIMIT_S), daemon=True)
               for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=RUN_LIMIT_S + RESULT_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "a client is still waiting past the time limit"
    log.info("load: %d accepted, %d refused in %.1f s", len(tally.accepted), len(tally.refused), elapsed)

    assert tally.other == []
    assert len(tally.accepted) + len(tally.refused) == CLIENTS * JOBS_PER_CLIENT
    assert tally.refused, "with 4 clients, 1 slot and a queue of 1, some submissions must be refused"
    assert all("Queue is full" in m for m in tally.refused), tally.refused[:3]
    assert len(tally.accepted) >= CLIENTS  # every client got work through

    dupes = [i for i, n in Counter(tally.accepted).items() if n > 1]
    assert dupes == []
    new = [j for j in store.list(limit=None) if j["id"] not in before]
    assert sorted(j["id"] for j in new) == sorted(tally.accepted)  # none lost, none extra
    assert all(j["status"] in TERMINAL for j in new)
    assert Counter(j["status"] for j in new) == {"succeeded": len(tally.accepted)}
    assert server.process.poll() is None

    time.sleep(SETTLE_S)
    rss_end = _rss_mb(server.process.pid)
    log.info("server RSS: %.1f MiB after warm-up, %.1f MiB after the load", rss_start, rss_end)
    assert abs(rss_end - rss_start) <= RSS_TOLERANCE * rss_start, (rss_start, rss_end)
