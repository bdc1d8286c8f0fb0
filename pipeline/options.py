"""Options and results of one lip-sync job (frozen dataclasses, JSON-friendly)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.media.probe import Limits

MODELS = ("auto", "wav2lip", "latentsync", "baseline", "passthrough")
LOOP_MODES = ("pingpong", "loop")
DEFAULT_PADS = (0, 10, 0, 0)  # top, bottom, left, right: Wav2Lip's defaults, in pixels
TRACK_LONG_SIDE = 384  # px: faces are tracked on frames scaled to this long side (never upscaled)


@dataclass(frozen=True)
class RunOptions:
    """Everything that decides how a job runs; stored with the job as JSON."""

    model: str = "auto"
    face_index: int = 0
    device: str = "auto"
    batch_size: int | None = None  # None: the generator's own default
    checkpoint: str | None = None  # explicit Wav2Lip checkpoint path
    pads: tuple[int, int, int, int] = DEFAULT_PADS
    loop: str = "pingpong"  # how the video is extended when the audio is longer
    crf: int = 18
    preset: str = "veryfast"
    encoder: str = "libx264"
    tracker: str = "auto"  # auto | insightface | dlib
    track_long_side: int = TRACK_LONG_SIDE
    timeout_s: float | None = None
    work_dir: str | None = None  # parent of the per-job temp folder (default: system temp)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.loop not in LOOP_MODES:
            raise ValueError(f"unknown loop mode {self.loop!r}: choose one of {', '.join(LOOP_MODES)}")
        if self.face_index < 0:
            raise ValueError("face_index must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= self.crf <= 51:
            raise ValueError("crf must be between 0 and 51")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunResult:
    """What one job produced and how long each stage took."""

    output_path: str
    model_requested: str
    model_used: str
    model_reason: str
    frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    frames_without_face: int
    timings: dict[str, float]  # stage -> wall seconds spent in it
    stage_offsets: dict[str, float]  # stage -> seconds from job start to its first work
    total_s: float
    peak_rss_mb: float
    checkpoint: dict[str, str] | None  # {"path", "sha256"} of the generator weights, if any
    video: dict[str, Any]  # probe facts of the face input
    audio: dict[str, Any]  # probe facts of the speech input
    track: Any = field(default=None, repr=False, compare=False)  # pipeline.faces.tracking.Track or None
    # output index -> the original frame (pipeline.media.yuv.YuvFrame) kept for scoring (run(keep=))
    originals: Any = field(default=None, repr=False, compare=False)
    # the speech as the job decoded it (16 kHz mono float32 numpy array), kept with the
    # originals for scoring (run(keep=)), else None
    speech: Any = field(default=None, repr=False, compare=False)
    started_wall: float = field(default=0.0, repr=False, compare=False)  # time.time() at the run's start
    # where the run ran when not in this process (an executor's node: its id, address and
    # device facts), for the job record; None here
    host: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("track", "originals", "speech", "started_wall", "host")}
        d["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        d["stage_offsets"] = {k: round(v, 4) for k, v in self.stage_offsets.items()}
        return d
