"""LipSync Lab: ``python app.py`` serves the Gradio app, its API and /healthz, /readyz, /metrics.

Settings come from environment variables (see the README, "The app and its API"); the
app is assembled in ``ui/`` (``ui.server.create_app``) and a job's life is in ``jobs/``.
"""

from __future__ import annotations

import logging
import os

import uvicorn

from jobs.settings import settings_from_env
from ui.server import create_app


def main() -> None:
    logging.basicConfig(level=os.environ.get("LIPSYNC_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_env(os.environ)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
