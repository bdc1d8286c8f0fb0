"""The whole Gradio app: the tabs and the named API endpoints, on one shared context."""

from __future__ import annotations

import logging

import gradio as gr

from jobs.service import open_service
from jobs.settings import Settings
from ui.context import AppContext
from ui.generate import build_api_endpoints, build_generate_tab
from ui.history import build_compare_tab, build_history_api, build_history_tab
from ui.monitor import build_performance_tab, build_system_tab
from ui.review import build_leaderboard_tab, build_review_api, build_review_tab
from ui.suites import build_suites_tab
from ui.privacy import build_sign_in

log = logging.getLogger(__name__)

TITLE = "LipSync Lab"
INTRO = ("Lip-sync a face video (or a still photo) to a speech track. The result is shown beside "
         "the original with its scores, and every job is kept in the History.")


def make_context(settings: Settings) -> AppContext:
    """The tabs' shared context around a started service (``jobs.service.open_service``)."""
    svc = open_service(settings)
    return AppContext(settings=svc.settings, store=svc.store, examples=svc.examples,
                      executor=svc.executor)


def build_blocks(ctx: AppContext) -> gr.Blocks:
    """The Blocks with its queue; ``ctx.blocks`` is set (on the first build: a reload's new
    Blocks takes over when it is swapped in) so the System tab and /metrics see the queue.
    Gradio's cache (uploads, copies of results) drops files older than ``cache_hours``."""
    age = int(ctx.settings.cache_hours * 3600)
    with gr.Blocks(title=TITLE, delete_cache=(max(60, min(age, 3600)), age)) as blocks:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        build_sign_in(ctx)
        with gr.Tab("Generate", elem_id="generate-tab"):
            build_generate_tab(ctx)
        build_history_tab(ctx)
        build_compare_tab(ctx)
        with gr.Tab("Suites", elem_id="suites-tab"):
            build_suites_tab(ctx)
        with gr.Tab("Review", elem_id="review-tab"):
            build_review_tab(ctx)
        with gr.Tab("Leaderboard", elem_id="leaderboard-tab") as board_tab:
            build_leaderboard_tab(ctx, board_tab)
        build_performance_tab(ctx)
        build_system_tab(ctx)
        build_api_endpoints(ctx)
        build_history_api(ctx)
        build_review_api(ctx)
    blocks.queue(max_size=ctx.settings.queue_size, default_concurrency_limit=ctx.settings.max_jobs)
    if ctx.blocks is None:
        ctx.blocks = blocks
    return blocks
