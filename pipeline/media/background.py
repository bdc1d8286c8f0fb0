"""Background threads that keep the decoder and the encoder busy while Python works.

A frame crosses two pipes: ffmpeg (decode) -> Python (generate, blend) -> ffmpeg (encode).
Done in one thread, each ffmpeg waits while Python handles the other one. ``Prefetch`` reads
the decoder ahead into a bounded queue and ``BackgroundWriter`` feeds the encoder from
another, so the three overlap (pipe reads and writes release the GIL). Both queues are
bounded, so memory stays constant whatever the video's length.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_END = object()
PUT_POLL_S = 0.1  # how often a blocked producer checks whether it was told to stop


class Prefetch:
    """Iterate ``source`` in a daemon thread, at most ``depth`` items ahead of the consumer."""

    def __init__(self, source: Iterator[Any], *, depth: int, name: str = "prefetch") -> None:
        self._source = source
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = _thread(self._work, name)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
            self._error = exc
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()
            self._put(_END)

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # later calls end too
            if self._error is not None:
                raise self._error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop reading ahead and close the source (kills its decoder)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=PUT_POLL_S)
            except queue.Empty:
                pass
        self._thread.join()


class BackgroundWriter:
    """Call ``writer.write(frame)`` in a daemon thread; ``close`` waits and closes the writer.

    An error in the thread is raised by the next ``write`` or by ``close``. ``abort``
    (also on leaving a ``with`` block by an exception) stops the thread and aborts the writer.
    """

    def __init__(self, writer: Any, *, depth: int, name: str = "encode") -> None:
        self.writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._aborted = threading.Event()
        self._thread = _thread(self._work, name)

    def _work(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is _END or self._aborted.is_set():
                return
            if self._error is not None:
                continue  # drain: the producer learns of the error on its next write
            try:
                self.writer.write(frame)
            except BaseException as exc:  # noqa: BLE001 - handed to the producer's thread
                self._error = exc

    def write(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(frame)

    def close(self) -> None:
        """Wait until every frame is written, then finish the file (raises any error)."""
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error
        self.writer.close()

    def abort(self) -> None:
        self._aborted.set()
        try:
            self._queue.put_nowait(_END)
        except queue.Full:
            pass
        self.writer.abort()  # kills ffmpeg, so a blocked write returns at once
        self._thread.join()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def in_background(fn: Callable[..., Any], *args: Any, name: str = "background") -> Future[Any]:
    """``fn(*args)`` on a daemon thread; its result (or its exception) in the returned future.
    For work that waits on a subprocess (an ffmpeg decode, a probe) beside the caller's own."""
    job: Future[Any] = Future()

    def work() -> None:
        try:
            job.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised by job.result() in the caller
            job.set_exception(exc)

    _thread(work, name)
    return job


def _thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A started daemon thread running ``target`` in a copy of the caller's context, so
    what the job set there (``pipeline.media.ffmpeg.ProcessScope``) holds in it too."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)
    thread.start()
    return thread
