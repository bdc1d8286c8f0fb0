"""Turning domain errors into user-facing Gradio errors: the one place ui/ does it.

Every ``LipSyncError`` (bad media, no face, missing weights, ffmpeg, cancel, timeout), every
storage error (unknown job id, database busy) and a bad option value reaches the user as a
``gr.Error`` with the library's own message and no traceback. Anything else is a bug: it is
logged with its traceback and shown as a short generic error.
"""

from __future__ import annotations

import contextlib
import html
import logging
from collections.abc import Iterator

import gradio as gr

from pipeline.errors import LipSyncError
from storage.db import StorageError

log = logging.getLogger(__name__)

TITLES = {
    "InvalidMedia": "Unusable input file",
    "NoFaceFound": "No face found",
    "WeightsUnavailable": "Model weights missing",
    "WeightsInvalid": "Model weights invalid",
    "FFmpegError": "Video processing failed",
    "JobCancelled": "Cancelled",
    "JobTimeout": "Time limit reached",
    "WorkerDied": "Generation worker crashed",
    "NodeLost": "Generation node lost",
    "ClusterUnavailable": "Generation cluster unreachable",
    "JobNotFound": "Unknown job",
    "InvalidJobId": "Not a job id",
}
USER_ERRORS = (LipSyncError, StorageError, ValueError)


def to_gr_error(exc: BaseException) -> gr.Error:
    """The ``gr.Error`` shown for ``exc``: its class as the title, its message as the body."""
    name = type(exc).__name__
    title = TITLES.get(name, "Invalid request" if isinstance(exc, ValueError) else "Error")
    message = html.escape(str(exc) or name, quote=False)  # gr.Error renders HTML
    return gr.Error(f"{name}: {message}", title=title, print_exception=False)


@contextlib.contextmanager
def user_errors(action: str) -> Iterator[None]:
    """Re-raise domain errors as ``gr.Error`` (``action`` names what failed in the log)."""
    try:
        yield
    except gr.Error:
        raise
    except USER_ERRORS as exc:
        log.info("%s failed: %s: %s", action, type(exc).__name__, exc)
        raise to_gr_error(exc) from None
