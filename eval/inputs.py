"""What scoring loads besides the two videos: the speech, the SyncNet model, the landmark
model and (when no job handed one over) the original's face track. Each loader that may find
nothing returns ``(None, reason)`` instead of raising, so a score that cannot be computed is
null with that reason (``eval.score``), never a number from random weights.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future

import numpy as np

from pipeline.media.audio import load_audio
from pipeline.media.background import in_background
from pipeline.errors import InvalidMedia, WeightsInvalid, WeightsUnavailable
from pipeline.faces.backends import make_tracker
from pipeline.options import RunOptions
from pipeline.media.probe import MediaInfo
from pipeline.faces.tracking import Track
from pipeline.weights import SYNCNET, resolve


def track_original(info: MediaInfo, fps: float) -> Track:
    """The original's face track at full resolution, as a job computes it (default options)."""
    from pipeline.faces.tracking import track_video  # the tracker and decoder: only when no track is given

    return track_video(info.path, info, options=RunOptions(), fps=fps,  # every frame the decoder yields
                       n_track=sys.maxsize, landmarks=False)  # scoring reads the boxes only


def speech_or_reason(audio: str | os.PathLike[str] | None, generated: str | os.PathLike[str]
                     ) -> tuple[np.ndarray | None, str]:
    """(16 kHz speech, "") from ``audio`` (else the generated video's own track), or (None, why not)."""
    source = audio if audio is not None else generated
    try:
        return load_audio(source), ""
    except InvalidMedia as exc:
        hint = "" if audio is not None else " (pass --audio / audio= with the speech track)"
        return None, f"{exc}{hint}"


def speech_rows_if_ready(job: Future[tuple[np.ndarray | None, str]], fps: float, n_frames: int
                         ) -> np.ndarray | None:
    """The sync proxy's speech measures (``eval.proxy_features.audio_features``) for
    ``n_frames`` video frames, if the speech ``job`` has finished with speech; else None (and
    None where they cannot be computed: the proxy computes them again and says why)."""
    from eval.proxy_features import audio_features

    wav = job.result()[0] if job.done() and job.exception() is None else None
    try:
        return None if wav is None else audio_features(wav, fps, n_frames)
    except ValueError:
        return None


def syncnet_or_reason(checkpoint: str | os.PathLike[str] | None, device: str):
    """(model, None) or (None, the reason LSE is n/a), on ``device`` (``auto``: CUDA where
    available). torch is imported only once weights resolve."""
    try:
        weights = resolve(SYNCNET, checkpoint)  # a failed Hub download is not retried in this process
        from eval.syncnet import cached_syncnet
        from pipeline.device import choose_device

        return cached_syncnet(weights, device=str(choose_device(device))), None
    except WeightsUnavailable as exc:
        return None, f"n/a (no SyncNet weights): {exc}"
    except WeightsInvalid as exc:
        return None, f"n/a (SyncNet weights unusable): {exc}"


def landmarker_or_reason():
    """(dlib tracker, None) or (None, the reason the proxy is n/a)."""
    try:
        return make_tracker("dlib"), None
    except WeightsUnavailable as exc:
        return None, f"n/a (no landmark model for the sync proxy): {exc}"


def speech_job(speech: np.ndarray | None, audio: str | os.PathLike[str] | None,
                generated: str | os.PathLike[str]) -> tuple[Future[tuple[np.ndarray | None, str]], str]:
    """The 16 kHz speech to score against (handed over, or decoded by ffmpeg beside the
    frames) as a future of (waveform or None, why not), and how it was had."""
    if speech is not None:
        done: Future[tuple[np.ndarray | None, str]] = Future()
        done.set_result((speech, ""))
        return done, "handed over by the job"
    job = in_background(speech_or_reason, audio, generated, name="eval-audio")
    return job, f"decoded from {os.path.basename(audio if audio is not None else generated)}"
