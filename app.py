"""LipSync Lab: ``python app.py`` serves the Gradio app, its API and /healthz, /readyz, /metrics;
``gradio app.py`` does the same and reloads the UI when a source file changes.

Settings come from environment variables (see the README, "The app and its API"); the
app is assembled and served by ``ui/`` (``ui.launch``) and a job's life is in ``jobs/``.
"""

from __future__ import annotations

import os

if os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true"):
    import spaces  # noqa: F401 - on ZeroGPU, before anything initialises torch's CUDA

import gradio as gr

from ui.blocks import build_blocks
from ui.launch import open_context, serve

if gr.NO_RELOAD:  # once per process: a reload under `gradio app.py` keeps the service
    ctx = open_context()
demo = build_blocks(ctx)  # the module-level Blocks that `gradio app.py` reloads

if __name__ == "__main__" and gr.NO_RELOAD:
    serve(ctx)
