"""LipSync Lab: ``python app.py`` serves the Gradio app, its API and /healthz, /readyz, /metrics.

Settings come from environment variables (see the README, "The app and its API"); the
app's logic lives in ``ui/``.
"""

from __future__ import annotations

import logging
import os

import fastapi
import gradio as gr
import uvicorn

from storage.jobs import JOBS_FOLDER
from ui.blocks import build_blocks, make_context
from ui.cancels import QueuedCancelRecorder
from ui.examples import examples_dir
from ui.server import make_server
from ui.settings import Settings, settings_from_env


def create_app(settings: Settings) -> fastapi.FastAPI:
    """The FastAPI server with the ops routes and the Gradio app mounted at "/"."""
    ctx = make_context(settings)
    blocks = build_blocks(ctx)
    blocks.queue(max_size=settings.queue_size, default_concurrency_limit=settings.max_jobs)
    server = make_server(ctx)
    server.add_middleware(QueuedCancelRecorder, ctx=ctx)  # records cancels of queued jobs
    return gr.mount_gradio_app(
        server, blocks, path="/", auth=settings.auth,
        auth_message="LipSync Lab: log in to review jobs" if settings.auth else None,
        max_file_size=settings.max_file_size,
        # the examples and the job folders <data_dir>/jobs/<id>/ only: never jobs.db or the rest
        allowed_paths=[os.fspath(examples_dir(settings.data_dir).resolve()),
                       os.fspath((settings.data_dir / JOBS_FOLDER).resolve())],
        show_error=True, footer_links=["api", "settings"])


def main() -> None:
    logging.basicConfig(level=os.environ.get("LIPSYNC_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_env(os.environ)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
