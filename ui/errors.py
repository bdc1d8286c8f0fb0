"""Turning errors into user-facing Gradio errors: the one place ui/ does it.

Every ``LipSyncError`` (bad media, a bad option, no face, missing weights, ffmpeg, cancel,
timeout) and every storage error (unknown job id, database busy) reaches the user as a
``gr.Error`` with the library's own message (absolute paths cut to their file names) and no
traceback. Anything else is a bug, a plain ``ValueError`` from a library included: it is
logged with its traceback and the user sees a short message naming the job id (when a job
was recorded) or an error reference to find it in the log.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import uuid
from collections.abc import Iterator

import gradio as gr

from pipeline.errors import LipSyncError
from storage.db import StorageError

log = logging.getLogger(__name__)

TITLES = {
    "InvalidMedia": "Unusable input file",
    "InvalidOption": "Invalid option",
    "InputMissing": "Input missing",
    "NoFaceFound": "No face found",
    "WeightsUnavailable": "Model weights missing",
    "WeightsInvalid": "Model weights invalid",
    "FFmpegError": "Video processing failed",
    "JobCancelled": "Cancelled",
    "JobTimeout": "Time limit reached",
    "JobTooSlow": "Would exceed the time limit",
    "WorkerDied": "Generation worker crashed",
    "NodeLost": "Generation node lost",
    "ClusterUnavailable": "Generation cluster unreachable",
    "JobNotFound": "Unknown job",
    "InvalidJobId": "Not a job id",
    "SuiteError": "Invalid suite",
    "ReviewerRequired": "Sign in to rate",
    "NoPairsLeft": "Nothing left to rate",
    "UnknownPair": "Unknown pair",
    "AlreadyRated": "Already rated",
    "ForgedPair": "Invalid pair id",
}
USER_ERRORS = (LipSyncError, StorageError)  # the domain's errors; a plain ValueError is a bug
INTERNAL_TITLE = "Internal error"
# an absolute path (at least two components) not inside a word: shown as its last component
_ABS_PATH = re.compile(r"(?<![\w.~/-])/(?:[^\s'\"/:,;()\[\]]+/)+([^\s'\"/:,;()\[\]]+)")


def without_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its file name (``/tmp/x/face.mp4`` -> ``face.mp4``)."""
    return _ABS_PATH.sub(r"\1", text)


def to_gr_error(exc: BaseException) -> gr.Error:
    """The ``gr.Error`` shown for a domain error: its class as the title, its message as the body."""
    name = type(exc).__name__
    message = html.escape(without_paths(str(exc) or name), quote=False)  # gr.Error renders HTML
    return gr.Error(f"{name}: {message}", title=TITLES.get(name, "Error"), print_exception=False)


def internal_error(action: str, exc: BaseException) -> gr.Error:
    """Log ``exc`` with its traceback; the short ``gr.Error`` the user sees instead, naming the
    job id when one was recorded (``exc.job_id``), else a reference that is in the log line."""
    job_id = getattr(exc, "job_id", None)
    ref = f"job {job_id}" if job_id else f"error reference {uuid.uuid4().hex[:12]}"
    log.error("%s failed unexpectedly (%s)", action, ref, exc_info=exc)
    return gr.Error(f"Something went wrong on the server during {action} ({ref}); the details are "
                    "in the server's log.", title=INTERNAL_TITLE, print_exception=False)


@contextlib.contextmanager
def user_errors(action: str) -> Iterator[None]:
    """Re-raise domain errors as ``gr.Error`` and anything else as a short internal error
    (logged with its traceback); ``action`` names what failed."""
    try:
        yield
    except gr.Error:
        raise
    except USER_ERRORS as exc:
        log.info("%s failed: %s: %s", action, type(exc).__name__, exc)
        raise to_gr_error(exc) from None
    except Exception as exc:  # noqa: BLE001 - a bug: logged whole, the user gets a short message
        raise internal_error(action, exc) from None
