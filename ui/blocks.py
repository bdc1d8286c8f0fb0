"""The whole Gradio app: the five tabs and the named API endpoints, on one shared context."""

from __future__ import annotations

import dataclasses
import logging
import threading

import gradio as gr

from storage.jobs import JobStore
from ui.context import AppContext
from ui.examples import ensure_examples
from ui.generate import build_api_endpoints, build_generate_tab
from ui.history import build_compare_tab, build_history_api, build_history_tab
from ui.monitor import build_performance_tab, build_system_tab
from ui.settings import Settings
from ui.workspace import clean_stale_work_dirs, process_work_dir

log = logging.getLogger(__name__)

TITLE = "LipSync Lab"
INTRO = ("Lip-sync a face video (or a still photo) to a speech track. The result is shown beside "
         "the original with its scores, and every job is kept in the History.")


def make_context(settings: Settings) -> AppContext:
    """Open the job history (marking jobs of dead processes interrupted), delete the job temp
    folders of dead processes, give this process its own (``settings.work_dir``) and make the
    examples. With ``settings.isolate`` the generation workers start (and load their models)
    in the background."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_work_dirs(settings.data_dir)
    settings = dataclasses.replace(settings, work_dir=process_work_dir(settings.data_dir))
    store = JobStore(settings.db_path, data_dir=settings.data_dir)
    if store.recovered:
        log.warning("%d job(s) of an earlier process were marked interrupted", len(store.recovered))
    try:
        examples = ensure_examples(settings.data_dir)
    except Exception:  # noqa: BLE001 - the app works without examples; say why in the log
        log.exception("could not make the example inputs")
        examples = {}
    workers = None
    if settings.isolate:  # jobs run in the workers: they warm up, the server need not
        from pipeline.worker import WorkerPool

        workers = WorkerPool(settings.max_jobs, lane_dir=settings.work_dir)
        workers.start()
    else:
        from pipeline.recording import warm_up

        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    return AppContext(settings=settings, store=store, examples=examples, workers=workers)


def build_blocks(ctx: AppContext) -> gr.Blocks:
    """The Blocks; ``ctx.blocks`` is set so the System tab and /metrics can see the queue."""
    with gr.Blocks(title=TITLE) as blocks:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tab("Generate", elem_id="generate-tab"):
            build_generate_tab(ctx)
        build_history_tab(ctx)
        build_compare_tab(ctx)
        build_performance_tab(ctx)
        build_system_tab(ctx)
        build_api_endpoints(ctx)
        build_history_api(ctx)
    ctx.blocks = blocks
    return blocks
