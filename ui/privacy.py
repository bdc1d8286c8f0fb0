"""Visitors' privacy on a public Space: whose jobs a request sees, the reviewers' sign-in,
and the refusal of other visitors' job files (policy in :mod:`jobs.access`).

A job's output files are handed to the browser or ``gradio_client`` as copies in Gradio's
cache (under a content-hash folder that only the answer names), so nobody needs to fetch
``<data_dir>/jobs/<id>/...`` by path. With private sessions :class:`PrivateJobFiles` refuses
every such fetch (``/gradio_api/file=<path>`` under the job folders) with 403: a visitor who
learns another job's path still cannot download it.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import gradio as gr

from jobs.access import JobAccessDenied, Viewer, viewer_for
from storage.jobs import JOBS_FOLDER
from ui.context import AppContext

log = logging.getLogger(__name__)

FILE_ROUTE = "/file="
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def viewer(ctx: AppContext, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> Viewer:
    """The request's viewer: its login name, its browser session and its Hugging Face sign-in."""
    return viewer_for(ctx.settings,
                      username=getattr(request, "username", None) if request is not None else None,
                      session_hash=getattr(request, "session_hash", None) if request is not None else None,
                      hf_username=getattr(profile, "username", None) if profile is not None else None)


def reviewers_only(ctx: AppContext, request: gr.Request | None, profile: gr.OAuthProfile | None,
                   what: str) -> None:
    """On a public Space (private sessions), ``what`` (suites, blind review) shows every
    visitor's results: only reviewers may use it. JobAccessDenied for anyone else."""
    if not viewer(ctx, request, profile).sees_all:
        raise JobAccessDenied(f"{what} show results of every visitor: on this Space they are for "
                              "reviewers (sign in with Hugging Face as one of LIPSYNC_REVIEWERS)")


def build_sign_in(ctx: AppContext) -> None:
    """Hugging Face sign-in for reviewers, on a private Space with ``hf_oauth: true``."""
    s = ctx.settings
    if not s.private_sessions:
        return
    if s.oauth and s.reviewers:
        with gr.Row():
            gr.LoginButton(value="Reviewers: sign in with Hugging Face", elem_id="reviewer-login")
            gr.Markdown("Each visitor sees only the jobs of this browser session; reviewers listed "
                        "in `LIPSYNC_REVIEWERS` who sign in see every job.")
    else:
        gr.Markdown("Each visitor sees only the jobs of this browser session (a page reload "
                    "starts a new one).", elem_id="privacy-note")


def _file_path(scope: Scope) -> str | None:
    path = scope.get("path", "")
    at = path.find(FILE_ROUTE)
    if scope.get("type") != "http" or at < 0:
        return None
    return urllib.parse.unquote(path[at + len(FILE_ROUTE):])


class PrivateJobFiles:
    """ASGI middleware: with private sessions, 403 for a file fetch under the job folders."""

    def __init__(self, app: ASGIApp, *, ctx: AppContext) -> None:
        self.app = app
        self.jobs_root = Path(ctx.settings.data_dir / JOBS_FOLDER).resolve()
        self.active = ctx.settings.private_sessions

    def refused(self, scope: Scope) -> bool:
        wanted = _file_path(scope) if self.active else None
        if not wanted:
            return False
        try:
            resolved = Path(os.path.abspath(wanted)).resolve()
        except (OSError, ValueError):
            return True
        return resolved == self.jobs_root or self.jobs_root in resolved.parents

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if not self.refused(scope):
            await self.app(scope, receive, send)
            return
        log.info("refused a direct fetch of a job file: %s", scope.get("path"))
        body = b"job files are served only to the session that made the job"
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
