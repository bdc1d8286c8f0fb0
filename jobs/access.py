"""Who may see which jobs: every job for everyone, except on a public Space.

On a Hugging Face Space without ``LIPSYNC_AUTH`` (``Settings.private_sessions``) a visitor
sees and fetches only the jobs of their own browser session: each job records its owner
(``visitor-<hash of the Gradio session>``) and the history queries filter on it. Reviewers
who should see every job sign in, with ``LIPSYNC_AUTH`` (which turns private sessions off:
every logged-in user is a reviewer) or with Hugging Face sign-in restricted to the user
names in ``LIPSYNC_REVIEWERS``. Off a Space nothing changes. Gradio-free: the UI passes
in what it knows of a request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from jobs.settings import Settings
from pipeline.errors import LipSyncError

VISITOR_PREFIX = "visitor-"  # owner of a job made by an anonymous visitor's session
REVIEWER_PREFIX = "hf:"  # owner of a job made by a signed-in Hugging Face user


class JobAccessDenied(LipSyncError):
    """The job belongs to another visitor's session."""


@dataclass(frozen=True)
class Viewer:
    """A request's identity for the history: the owner its jobs get, and whether it sees all."""

    owner: str | None
    sees_all: bool = True

    def may_see(self, job: dict[str, Any]) -> bool:
        return self.sees_all or (self.owner is not None and job.get("user") == self.owner)

    def check(self, job: dict[str, Any]) -> dict[str, Any]:
        """``job`` when this viewer may see it, else JobAccessDenied (the same for an
        unknown id's neighbours: nothing about the job is said)."""
        if not self.may_see(job):
            raise JobAccessDenied(f"job {job.get('id')} belongs to another visitor's session: on this "
                                  "Space each session sees only its own jobs (reviewers sign in)")
        return job

    @property
    def user_filter(self) -> str | None:
        """The ``user`` filter for history queries (None: no filter)."""
        return None if self.sees_all else (self.owner or VISITOR_PREFIX + "none")


EVERYONE = Viewer(owner=None, sees_all=True)


def visitor_owner(session_hash: str | None) -> str | None:
    """The owner key of an anonymous session (a hash: the session id itself stays secret)."""
    if not session_hash:
        return None
    return VISITOR_PREFIX + hashlib.sha256(session_hash.encode("utf-8")).hexdigest()[:16]


def viewer_for(settings: Settings, *, username: str | None = None, session_hash: str | None = None,
               hf_username: str | None = None) -> Viewer:
    """The viewer of a request: its login (``LIPSYNC_AUTH``) name, its Gradio session and its
    Hugging Face sign-in name, if any."""
    if not settings.private_sessions:
        return Viewer(owner=username, sees_all=True)
    if hf_username and hf_username in settings.reviewers:
        return Viewer(owner=REVIEWER_PREFIX + hf_username, sees_all=True)
    return Viewer(owner=visitor_owner(session_hash), sees_all=False)
