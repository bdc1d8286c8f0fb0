"""A face track built from the run loop's own decoded frames as they stream past.

The render decodes every frame at full size anyway; :class:`LiveTrack` taps that stream
(:meth:`LiveTrack.tap`, on the thread that feeds the render), reduces one frame in
``DETECT_EVERY`` to the tracking size in this process (the luma plane for a tracker that
takes grey frames) and runs :class:`pipeline.faces.tracking.TrackBuilder` on it. The render
asks :meth:`LiveTrack.at` for a frame's face and waits only until that face is final, a
bounded ``2 * DETECT_EVERY`` frames behind the tap. So a job decodes its video once, not
once for tracking and once for rendering, and the encoder starts on the first frames
instead of waiting for a whole tracking pass. The faces are those ``track_frames`` gives for
the same reduced frames (tests/test_faces.py streams and compares them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np

from pipeline.faces.tracking import DETECT_EVERY, Track, TrackBuilder, tracking_size
from pipeline.faces.types import Face, FaceTracker, gray_crop
from pipeline.media.yuv import YuvFrame

WAIT_S = 0.5  # how often a waiting render re-checks for a failure of the tapped stream


class TrackStopped(RuntimeError):
    """The tapped stream ended early (closed) before the face asked for was final."""


class LiveTrack:
    """Faces of the first ``n_track`` frames of a stream of I420 buffers of ``size`` (w, h),
    tracked on frames reduced to ``long_side`` pixels on their long side."""

    def __init__(self, tracker: FaceTracker, *, size: tuple[int, int], long_side: int, n_track: int,
                 face_index: int = 0, landmarks: bool = True, every: int = DETECT_EVERY) -> None:
        self.small, scale_xy = tracking_size(*size, long_side)
        self._gray = tracker.accepts_gray
        self._builder = TrackBuilder(tracker, scale=scale_xy, face_index=face_index, every=every,
                                     landmarks=landmarks, reduce=self._reduce)
        self.n_track = max(1, n_track)
        self._faces: list[Face | None] = []  # the final faces so far, from frame 0
        self._track: Track | None = None
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self.seconds = 0.0  # spent tracking on the tapping thread

    def _reduce(self, buf: np.ndarray) -> np.ndarray:
        frame = YuvFrame(buf)
        if self._gray:  # the luma plane, limited range stretched as a BGR -> grey conversion gives
            return gray_crop(frame, 0, 0, frame.width, frame.height, size=self.small)
        return cv2.resize(frame.to_bgr(), self.small, interpolation=cv2.INTER_AREA)

    def tap(self, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """``frames`` (I420 buffers), unchanged, tracking the first ``n_track`` as they pass."""
        try:
            for buf in frames:
                if self._track is None:
                    self._feed(buf)
                yield buf
            self._finish()  # the decoder gave fewer frames than counted
        except BaseException as exc:  # noqa: BLE001 - a waiting render must hear of any end
            self._fail(exc)
            raise

    def _feed(self, buf: np.ndarray) -> None:
        start = time.perf_counter()
        builder = self._builder
        builder.feed(buf)
        if builder.n >= self.n_track:
            self._finish()
        elif builder.ready() > len(self._faces):
            more = builder.faces(len(self._faces), builder.ready())
            with self._cond:
                self._faces.extend(more)
                self._cond.notify_all()
        self.seconds += time.perf_counter() - start

    def _finish(self) -> None:
        if self._track is not None:
            return
        start = time.perf_counter()
        track = self._builder.finish()  # NoFaceFound when no tracked frame has a face
        with self._cond:
            self._track, self._faces = track, track.faces
            self._cond.notify_all()
        self.seconds += time.perf_counter() - start

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._track is None and self._error is None:
                self._error = exc
            self._cond.notify_all()

    def at(self, i: int) -> Face | None:
        """The face of source frame ``i`` (past the end, the last frame's), once final."""
        with self._cond:
            while True:
                if i < len(self._faces):
                    return self._faces[i]
                if self._track is not None:
                    return self._track.at(i)
                if self._error is not None:
                    if isinstance(self._error, Exception):
                        raise self._error
                    raise TrackStopped(f"the decoded stream stopped before frame {i}'s face was final")
                self._cond.wait(WAIT_S)

    def result(self) -> Track:
        """The whole Track (waits for the tap to finish it)."""
        self.at(self.n_track - 1)
        assert self._track is not None
        return self._track
