"""A suite's per-clip grid video: the original next to each setting's result, same audio,
each tile labelled in a band above it (OpenCV putText).

Layout: one row of tiles ``[original | setting 1 | setting 2 | ...]``, each ``tile_w`` x
(``LABEL_H`` + ``tile_h``) px; the grid lasts as long as the longest result (the speech), at
its frame rate; the original is extended ping-pong as the run loop extends it, and a setting
whose job failed shows a grey tile labelled "(failed)".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.media.decode import frame_plan, read_frames
from pipeline.media.encode import FrameWriter
from pipeline.media.probe import probe

log = logging.getLogger(__name__)

TILE_H = 240  # px: the height every tile is scaled to (even, for yuv420p)
LABEL_H = 28  # px: the band above each tile that carries its label
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.55
FAILED_GREY = 64
ORIGINAL_LABEL = "original"


@dataclass(frozen=True)
class GridLayout:
    labels: tuple[str, ...]  # left to right: the original, then each setting
    tile_w: int
    tile_h: int
    frames: int
    fps: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the grid video."""
        return self.tile_w * len(self.labels), self.tile_h + LABEL_H


def label_band(text: str, width: int) -> np.ndarray:
    """The (LABEL_H, width, 3) BGR band with ``text`` in white on black, cut to fit."""
    band = np.zeros((LABEL_H, width, 3), np.uint8)
    shown = text
    while shown and cv2.getTextSize(shown, FONT, FONT_SCALE, 1)[0][0] > width - 8:
        shown = shown[:-1]
    cv2.putText(band, shown, (4, LABEL_H - 9), FONT, FONT_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    return band


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def _tile_size(original: str) -> tuple[int, int]:
    info = probe(original)
    w, h = info.video.display_size if info.video is not None else (TILE_H, TILE_H)
    tile_h = _even(min(TILE_H, h))
    return _even(tile_h * w / h), tile_h


def _original_frames(path: str, size: tuple[int, int], fps: float, n_out: int) -> Iterator[np.ndarray]:
    """The original at ``fps``, scaled, extended ping-pong to ``n_out`` frames (held in memory
    at tile size)."""
    frames = list(read_frames(path, size=size, fps=fps))
    if not frames:
        frames = [np.full((size[1], size[0], 3), FAILED_GREY, np.uint8)]
    for i in frame_plan(len(frames), n_out):
        yield frames[i]


def _padded(frames: Iterator[np.ndarray], blank: np.ndarray) -> Iterator[np.ndarray]:
    """``frames`` then ``blank`` for ever (a result shorter than the grid holds a grey tile)."""
    last = blank
    for last in frames:
        yield last
    while True:
        yield last


def write_grid(original: str | os.PathLike[str], results: Sequence[tuple[str, str | None]],
               audio: str | os.PathLike[str], output: str | os.PathLike[str]) -> GridLayout:
    """Write the grid of ``original`` and ``results`` ((label, video path or None if the job
    failed), in order) with ``audio`` to ``output``; returns its layout. Raises ValueError when
    no result exists."""
    done = [path for _label, path in results if path]
    if not done:
        raise ValueError("no setting produced a video for this clip: no grid to make")
    infos = [probe(p) for p in done]
    fps = infos[0].video.fps if infos[0].video else 25.0
    n_out = max(int(round((i.duration_s or 0) * fps)) for i in infos)
    tile_w, tile_h = _tile_size(os.fspath(original))
    layout = GridLayout(labels=(ORIGINAL_LABEL, *[label if path else f"{label} (failed)"
                                                  for label, path in results]),
                        tile_w=tile_w, tile_h=tile_h, frames=n_out, fps=fps)
    blank = np.full((tile_h, tile_w, 3), FAILED_GREY, np.uint8)
    decoders = [read_frames(path, size=(tile_w, tile_h), fps=fps) if path else iter(())
                for _label, path in results]
    sources = [_original_frames(os.fspath(original), (tile_w, tile_h), fps, n_out),
               *[_padded(d, blank) for d in decoders]]
    bands = np.concatenate([label_band(label, tile_w) for label in layout.labels], axis=1)  # (LABEL_H, W, 3)
    width, height = layout.size
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    try:
        with FrameWriter(output, width, height, fps, audio_path=audio, preset="veryfast", crf=23) as writer:
            for _ in range(n_out):
                row = np.concatenate([next(src) for src in sources], axis=1)  # (tile_h, W, 3)
                writer.write(np.concatenate([bands, row], axis=0))  # (LABEL_H + tile_h, W, 3)
    finally:
        for decoder in decoders:  # ends each ffmpeg decoder still running
            getattr(decoder, "close", lambda: None)()
    log.info("grid %s: %d tiles, %dx%d, %d frames", output, len(layout.labels), width, height, n_out)
    return layout
