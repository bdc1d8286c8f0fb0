"""Options and results of one lip-sync job (frozen dataclasses, JSON-friendly)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import InvalidOption
from pipeline.media.probe import Limits

MODELS = ("auto", "wav2lip", "latentsync", "baseline", "passthrough")
# generators that drive the mouth from the speech energy the weights-free sync proxy reads
# (eval/sync_proxy.py): the proxy rewards them by construction, so their proxy scores carry a caution
SPEECH_ENERGY_MODELS = frozenset({"baseline"})
LOOP_MODES = ("pingpong", "loop")
TRACKERS = ("auto", "insightface", "dlib")
ENCODERS = ("auto", "libx264", "h264_nvenc")  # auto: NVENC where it works here (pipeline.media.encode)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")  # libx264's names
DEFAULT_PADS = (0, 10, 0, 0)  # top, bottom, left, right: Wav2Lip's defaults, in pixels
TRACK_LONG_SIDE = 384  # px: faces are tracked on frames scaled to this long side (never upscaled)
DEFAULT_STEPS = 20  # LatentSync's official DDIM steps: timesteps 951, 901, ..., 1
DEFAULT_GUIDANCE = 1.5  # LatentSync's official classifier-free guidance scale
MAX_STEPS = 1000  # LatentSync DDIM steps: at most the scheduler's 1,000 training timesteps
MAX_GUIDANCE = 20.0  # LatentSync classifier-free guidance scale (<= 1: no guidance)
MAX_SEED = 2**32 - 1

# The range of every numeric option (inclusive). batch_size sizes the run loop's queues in
# whole frames (about 3 x batch frames in flight: 2 GB at 4096 px for 128), so it has a
# ceiling; 128 is Wav2Lip's own GPU batch.
MAX_FACE_INDEX = 31
MAX_BATCH_SIZE = 128
MAX_PAD = 256  # px, each side
CRF_RANGE = (0, 51)  # libx264's
TRACK_SIDE_RANGE = (96, 1024)  # px
MAX_TIMEOUT_S = 24 * 3600.0
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")


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
    encoder: str = "auto"  # auto | libx264 | h264_nvenc
    tracker: str = "auto"  # auto | insightface | dlib
    track_long_side: int = TRACK_LONG_SIDE
    timeout_s: float | None = None
    # LatentSync sampling; None: $LIPSYNC_LATENTSYNC_STEPS / _GUIDANCE / _SEED, else 20 / 1.5 / 0
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    silence_keep: bool = True  # LatentSync: keep the source mouth where the speech gate hears silence
    work_dir: str | None = None  # parent of the per-job temp folder (default: system temp)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        _choice("model", self.model, MODELS)
        _choice("loop", self.loop, LOOP_MODES)
        _choice("tracker", self.tracker, TRACKERS)
        _choice("encoder", self.encoder, ENCODERS)
        _choice("preset", self.preset, PRESETS)
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise InvalidOption(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _whole("face_index", self.face_index, 0, MAX_FACE_INDEX)
        if self.batch_size is not None:
            _whole("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _whole("crf", self.crf, *CRF_RANGE)
        _whole("track_long_side", self.track_long_side, *TRACK_SIDE_RANGE)
        if not isinstance(self.pads, (tuple, list)) or len(self.pads) != 4:
            raise InvalidOption(f"pads must be four whole numbers (top, bottom, left, right) from "
                                f"{-MAX_PAD} to {MAX_PAD}, got {self.pads!r}")
        for side, pad in zip(("top", "bottom", "left", "right"), self.pads):
            _whole(f"pads ({side})", pad, -MAX_PAD, MAX_PAD)
        if self.timeout_s is not None:
            _number("timeout_s", self.timeout_s, 0.0, MAX_TIMEOUT_S, low_open=True)
        check_sampling(steps=self.steps, guidance=self.guidance, seed=self.seed)
        if not isinstance(self.silence_keep, bool):
            raise InvalidOption(f"silence_keep must be true or false, got {self.silence_keep!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_sampling(*, steps: int | None, guidance: float | None, seed: int | None) -> None:
    """InvalidOption naming the first LatentSync sampling setting out of its range (None: unset)."""
    if steps is not None:
        _whole("steps", steps, 1, MAX_STEPS)
    if guidance is not None:
        _number("guidance (<= 1: no guidance)", guidance, 0.0, MAX_GUIDANCE)
    if seed is not None:
        _whole("seed", seed, 0, MAX_SEED)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidOption(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _whole(name: str, value: Any, low: int, high: int) -> None:
    """InvalidOption naming ``name`` and its range unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidOption(f"{name} must be a whole number from {low} to {high}, got {value!r}")


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value <= high and \
        (value > low if low_open else value >= low)
    if not ok:
        raise InvalidOption(f"{name} must be a number {'over' if low_open else 'from'} {low:g} "
                            f"{'and at most' if low_open else 'to'} {high:g}, got {value!r}")


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
    checkpoint: dict[str, Any] | None  # {"path", "sha256"} of the generator weights (LatentSync: and "files"), if any
    video: dict[str, Any]  # probe facts of the face input
    audio: dict[str, Any]  # probe facts of the speech input
    track: Any = field(default=None, repr=False, compare=False)  # pipeline.faces.tracking.Track or None
    # output index -> the original frame (pipeline.media.yuv.YuvFrame) kept for scoring (run(keep=))
    originals: Any = field(default=None, repr=False, compare=False)
    # the speech as the job decoded it (16 kHz mono float32 numpy array), kept with the
    # originals for scoring (run(keep=)), else None
    speech: Any = field(default=None, repr=False, compare=False)
    started_wall: float = field(default=0.0, repr=False, compare=False)  # time.time() at the run's start
    # the settings the generator ran with, defaults resolved, and what it counted (LatentSync:
    # steps, guidance, seed, silence_keep, frames_kept_silent); {} for generators without any
    generator_facts: dict[str, Any] = field(default_factory=dict)
    encoder: str = "libx264"  # the video encoder that ran (options.encoder "auto" resolved)
    # the source frame each output frame shows (int64 numpy array, frame_plan of options.loop),
    # for scoring: the original's face of output frame i is that of source frame plan[i]
    plan: Any = field(default=None, repr=False, compare=False)
    # where the run ran when not in this process (an executor's node: its id, address and
    # device facts), for the job record; None here
    host: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("track", "originals", "speech", "started_wall", "plan", "host")}
        d["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        d["stage_offsets"] = {k: round(v, 4) for k, v in self.stage_offsets.items()}
        return d
