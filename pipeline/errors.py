"""Named exceptions of the lip-sync library.

Every failure a user can cause or fix has its own class with a message that says
what is wrong and, where possible, what to do. The UI turns these into gr.Error;
the CLI prints ``str(exc)`` on one line.
"""

from __future__ import annotations


class LipSyncError(Exception):
    """Base class for every error this library raises on purpose."""


class InvalidMedia(LipSyncError):
    """An input file is not usable media (unreadable, wrong streams, over a limit)."""


class NoFaceFound(LipSyncError):
    """No face was found in any sampled frame of the face input."""


class WeightsUnavailable(LipSyncError):
    """Model weights could not be found locally nor downloaded."""


class WeightsInvalid(LipSyncError):
    """A weights file exists but does not match the model (keys, shapes, corrupt file)."""


class FFmpegError(LipSyncError):
    """ffmpeg failed; the message carries the tail of ffmpeg's stderr."""


class JobCancelled(LipSyncError):
    """The job was cancelled by its owner."""


class JobTimeout(LipSyncError):
    """The job ran past its time limit and was stopped."""


class JobTooSlow(LipSyncError):
    """The job's estimated time exceeds its time limit: refused before it started."""


class WorkerDied(LipSyncError):
    """The worker process running the job died (a crash in native code, a kill)."""


class NodeLost(WorkerDied):
    """The cluster node (or its replica) running the job died or became unreachable."""


class ClusterUnavailable(LipSyncError):
    """The cluster that runs generation cannot be reached; jobs are refused until it can."""


class InputMissing(LipSyncError, ValueError):
    """A required input (video, audio, job id) was not given."""


class InvalidOption(LipSyncError, ValueError):
    """A job option is out of its range or not one of its choices; the message names the
    option and what it may be."""
