"""The History and Compare tabs and the /history and /job API endpoints."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from pipeline.options import MODELS
from storage.records import ACTIVE, TERMINAL
from storage.reports import history_frame
from ui import present
from ui.context import READ_GROUP, AppContext
from ui.errors import user_errors
from jobs.access import Viewer
from jobs.service import get_job, history_filters, job_outputs, list_jobs
from ui.privacy import viewer

log = logging.getLogger(__name__)

STATUSES = ("all", *ACTIVE, *sorted(TERMINAL))
MODEL_FILTERS = ("all", *[m for m in MODELS if m != "auto"])
RECENT = 200  # rows shown in the History table and offered in Compare


def _csv(ctx: AppContext, filters: dict[str, Any], who: Viewer) -> str:
    """The filtered history (all rows, every column of storage.reports.history_frame) as CSV."""
    filters = {**filters, "user": who.user_filter}
    frame = history_frame(ctx.store, **{k: v for k, v in filters.items() if v is not None})
    folder = Path(tempfile.mkdtemp(prefix="lipsync-history-"))
    path = folder / "lipsync_history.csv"
    frame.to_csv(path, index=False)
    return str(path)


def _details(ctx: AppContext, job_id: str, who: Viewer) -> tuple[Any, ...]:
    job = get_job(ctx.store, job_id, viewer=who)
    outs = job_outputs(job)
    options = {"options": job.get("options"), "facts": job.get("facts"), "device": job.get("device")}
    return (present.job_markdown(job), outs.get("video"), outs.get("side_by_side"),
            present.scores_table(job.get("scores") or []),
            present.timing_plot(present.stages_table(job.get("stages") or [])),
            options)


def _job_choices(ctx: AppContext, who: Viewer) -> list[tuple[str, str]]:
    jobs = list_jobs(ctx.store, limit=RECENT, viewer=who)
    return [(f"{j['id']} · {j['status']} · {j.get('model_used') or j.get('model_requested')}", j["id"])
            for j in jobs]


def build_history_tab(ctx: AppContext) -> gr.Tab:
    with gr.Tab("History", elem_id="history-tab") as tab:
        with gr.Row():
            status = gr.Dropdown(list(STATUSES), value="all", label="Status")
            model = gr.Dropdown(list(MODEL_FILTERS), value="all", label="Model")
            since = gr.Textbox(label="From (date or ISO time, UTC)", placeholder="2025-05-01")
            until = gr.Textbox(label="Until (exclusive; a bare date includes that day)")
            text = gr.Textbox(label="Input name contains")
        with gr.Row():
            refresh = gr.Button("Refresh", elem_id="history-refresh")
            csv_btn = gr.DownloadButton("Download CSV", elem_id="history-csv")
        table = gr.Dataframe(present.history_table([]), label="Jobs, newest first (select one)",
                             interactive=False, wrap=True, elem_id="history-table")
        with gr.Row():
            job_box = gr.Textbox(label="Job id", elem_id="history-job-id")
            show_btn = gr.Button("Show job")
        details = gr.Markdown(elem_id="history-details")
        with gr.Row():
            video = gr.Video(label="Result", interactive=False, height=360)
            sbs = gr.Video(label="Side by side", interactive=False, height=360)
        scores = gr.Dataframe(present.scores_table([]), label="Scores", interactive=False, wrap=True)
        timings = gr.BarPlot(x="stage", y="seconds", label="Seconds per stage (in pipeline order)")
        options = gr.JSON(label="Options, facts and device")

    filters = [status, model, since, until, text]

    def load(st: str, mo: str, si: str, un: str, tx: str, request: gr.Request,
             profile: gr.OAuthProfile | None) -> tuple[pd.DataFrame, str]:
        with user_errors("history"):
            who, f = viewer(ctx, request, profile), history_filters(st, mo, si, un, tx)
            return (present.history_table(list_jobs(ctx.store, limit=RECENT, viewer=who, **f)),
                    _csv(ctx, f, who))

    def show(job_id: str, request: gr.Request, profile: gr.OAuthProfile | None) -> tuple[Any, ...]:
        with user_errors("job details"):
            return _details(ctx, job_id, viewer(ctx, request, profile))

    def select(frame: pd.DataFrame, evt: gr.SelectData, request: gr.Request,
               profile: gr.OAuthProfile | None) -> tuple[Any, ...]:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        job_id = str(frame.iloc[row]["id"])
        return (job_id, *show(job_id, request, profile))

    detail_outputs = [details, video, sbs, scores, timings, options]
    common = {"concurrency_id": READ_GROUP, "concurrency_limit": None, "api_visibility": "private"}
    for trigger in (refresh.click, tab.select):
        trigger(load, inputs=filters, outputs=[table, csv_btn], **common)
    show_btn.click(show, inputs=[job_box], outputs=detail_outputs, **common)
    table.select(select, inputs=[table], outputs=[job_box, *detail_outputs], **common)
    return tab


def build_compare_tab(ctx: AppContext) -> gr.Tab:
    with gr.Tab("Compare", elem_id="compare-tab") as tab:
        with gr.Row():
            job_a = gr.Dropdown([], label="Job A", allow_custom_value=True)
            job_b = gr.Dropdown([], label="Job B", allow_custom_value=True)
        with gr.Row():
            refresh = gr.Button("Refresh job list")
            compare = gr.Button("Compare", variant="primary")
        with gr.Row():
            video_a = gr.Video(label="A", interactive=False, height=360)
            video_b = gr.Video(label="B", interactive=False, height=360)
        with gr.Row():
            text_a = gr.Markdown()
            text_b = gr.Markdown()
        score_diff = gr.Dataframe(label="Scores: A, B and B - A", interactive=False)
        timing_diff = gr.Dataframe(label="Stage seconds: A, B and B - A", interactive=False)

    def choices(request: gr.Request, profile: gr.OAuthProfile | None) -> tuple[Any, Any]:
        with user_errors("job list"):
            items = _job_choices(ctx, viewer(ctx, request, profile))
        return gr.Dropdown(choices=items), gr.Dropdown(choices=items)

    def run(a: str, b: str, request: gr.Request, profile: gr.OAuthProfile | None) -> tuple[Any, ...]:
        with user_errors("compare"):
            who = viewer(ctx, request, profile)
            ja, jb = get_job(ctx.store, a, viewer=who), get_job(ctx.store, b, viewer=who)
        scores, timings = present.compare_tables(ja, jb)
        return (job_outputs(ja).get("side_by_side") or job_outputs(ja).get("video"),
                job_outputs(jb).get("side_by_side") or job_outputs(jb).get("video"),
                present.job_markdown(ja), present.job_markdown(jb), scores, timings)

    common = {"concurrency_id": READ_GROUP, "concurrency_limit": None, "api_visibility": "private"}
    for trigger in (refresh.click, tab.select):
        trigger(choices, outputs=[job_a, job_b], **common)
    compare.click(run, inputs=[job_a, job_b],
                  outputs=[video_a, video_b, text_a, text_b, score_diff, timing_diff], **common)
    return tab


def build_history_api(ctx: AppContext) -> None:
    """/history (filters -> rows) and /job (id -> record) for gradio_client."""
    with gr.Column(visible=False):
        h_status = gr.Textbox("all", label="status")
        h_model = gr.Textbox("all", label="model")
        h_since = gr.Textbox("", label="since")
        h_until = gr.Textbox("", label="until")
        h_text = gr.Textbox("", label="text")
        h_limit = gr.Number(100, precision=0, label="limit")
        h_rows = gr.JSON(label="rows")
        h_btn = gr.Button("history")
        j_id = gr.Textbox("", label="job_id")
        j_record = gr.JSON(label="record")
        j_btn = gr.Button("job")

    def history(status: str, model: str, since: str, until: str, text: str, limit: float | None,
                request: gr.Request, profile: gr.OAuthProfile | None) -> list[dict[str, Any]]:
        """Jobs newest first, filtered by status, model used, created since/until and input name
        (on a public Space: this session's jobs only)."""
        with user_errors("history"):
            rows = list_jobs(ctx.store, limit=int(limit or 0), viewer=viewer(ctx, request, profile),
                             status=status, model=model, since=since, until=until, text=text)
        return json.loads(json.dumps(rows, default=str))

    def job(job_id: str, request: gr.Request, profile: gr.OAuthProfile | None) -> dict[str, Any]:
        """One job: status, options, inputs, stage timings, scores, device, outputs and error
        (on a public Space: only a job of this session)."""
        with user_errors("job"):
            record = get_job(ctx.store, job_id, viewer=viewer(ctx, request, profile))
        return json.loads(json.dumps(record, default=str))

    h_btn.click(history, inputs=[h_status, h_model, h_since, h_until, h_text, h_limit],
                outputs=[h_rows], api_name="history", concurrency_id=READ_GROUP, concurrency_limit=None)
    j_btn.click(job, inputs=[j_id], outputs=[j_record], api_name="job", concurrency_id=READ_GROUP,
                concurrency_limit=None)
