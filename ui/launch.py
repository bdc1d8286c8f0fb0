"""Serving the app: ``python app.py`` (uvicorn) and ``gradio app.py`` (Gradio's reload mode).

app.py opens the context once per process (:func:`open_context`: settings from the
environment, the job service), builds the module-level ``demo`` Blocks from it, and calls
:func:`serve`. Under ``gradio app.py`` (``GRADIO_WATCH_DIRS`` set) Gradio re-executes app.py
when a source file changes; the ``if gr.NO_RELOAD:`` block there keeps the service, a new
``demo`` is built from the changed ui/ modules and swapped into the running server.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import gradio as gr
import uvicorn
from gradio.http_server import Server
from gradio.routes import App
from gradio.utils import SourceFileReloader

from jobs.settings import settings_from_env
from ui.blocks import make_context
from ui.context import AppContext
from ui.server import create_app

log = logging.getLogger(__name__)


def open_context() -> AppContext:
    """Logging, settings from the environment, and the started service (once per process)."""
    logging.basicConfig(level=os.environ.get("LIPSYNC_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return make_context(settings_from_env(os.environ))


def serve(ctx: AppContext) -> None:
    """Serve ``ctx``'s Blocks with the ops routes until interrupted (reloading under ``gradio app.py``)."""
    app = create_app(ctx.settings, ctx=ctx)
    s = ctx.settings
    log.info("serving on http://%s:%d/%s", s.host, s.port, (s.root_path or "").strip("/"))
    if not os.environ.get("GRADIO_WATCH_DIRS"):
        uvicorn.run(app, host=s.host, port=s.port, log_level="warning", timeout_graceful_shutdown=5)
        return
    mounted = next(r.app for r in app.routes if isinstance(getattr(r, "app", None), App))
    reloader = _ContextReloader(ctx, app=mounted, watch_dirs=os.environ["GRADIO_WATCH_DIRS"].split(","),
                                watch_module_name=os.environ.get("GRADIO_WATCH_MODULE_NAME", "app"),
                                demo_file=os.environ.get("GRADIO_WATCH_DEMO_PATH", "app.py"),
                                watch_module=sys.modules["__main__"], stop_event=threading.Event(),
                                demo_name=os.environ.get("GRADIO_WATCH_DEMO_NAME") or "demo")
    server = Server(uvicorn.Config(app, host=s.host, port=s.port, log_level="warning"), reloader=reloader)
    mounted.blocks.server = server  # as Blocks.launch sets it; a swap carries it to the new Blocks
    server.run_in_thread()
    log.info("reload mode: watching %s", os.environ["GRADIO_WATCH_DIRS"])
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.close()


class _ContextReloader(SourceFileReloader):
    """Gradio's reloader, which also points the context at the Blocks swapped in."""

    def __init__(self, ctx: AppContext, **kwargs: object) -> None:
        self.ctx = ctx
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def swap_blocks(self, demo: gr.Blocks) -> None:
        super().swap_blocks(demo)
        self.ctx.blocks = demo
