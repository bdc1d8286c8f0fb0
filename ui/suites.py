"""The Suites tab and the /suite_run and /suite_results API endpoints.

A suite run is one event in the generation lane: its jobs run one after another on the app's
executor, and the tab shows a progress bar, each job's status (failures with their reason)
and, at the end, the summary per setting with 95% CIs, plots, the proxy ranking, the
comparison with the previous run, the per-clip grids and the exports.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import pandas as pd

from jobs.service import parse_options
from jobs.suites import DEFAULT_SETTINGS, JobStatus, SuiteResults, run_suite, suite_from_request, suite_results
from ui.context import GENERATION_GROUP, READ_GROUP, AppContext
from ui.errors import user_errors
from ui.privacy import reviewers_only

log = logging.getLogger(__name__)

PLOT_METRICS = ("lse_d", "lse_c", "psnr_full", "ssim_full", "psnr_face", "ssim_face", "sync_proxy_conf",
                "sync_proxy_corr", "rtf")
STATUS_COLUMNS = ["#", "pair", "setting", "status", "job id", "reason"]
N_VIEWS = 9  # what _views returns


def status_table(states: dict[int, JobStatus]) -> pd.DataFrame:
    rows = [[s.position + 1, s.pair, s.setting, s.status, s.job_id or "", s.error or ""]
            for _, s in sorted(states.items())]
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def summary_table(results: SuiteResults) -> pd.DataFrame:
    """Setting, jobs, failed, RTF and each metric as ``mean [low, high]``."""
    frame = results.summary
    out = frame[["setting", "model", "jobs", "failed"]].copy()
    out["rtf"] = frame["rtf_mean"].map(lambda v: f"{v:.2f}" if pd.notna(v) else "n/a")
    for col in frame.columns:
        if col.endswith("_mean") and col != "rtf_mean":
            m = col[:-5]
            out[m] = [f"{r[col]:.3f} [{r[m + '_ci_low']:.3f}, {r[m + '_ci_high']:.3f}]" if pd.notna(r[col])
                      else "n/a" for _, r in frame.iterrows()]
    return out


def metric_plot(results: SuiteResults | None, metric: str) -> pd.DataFrame:
    """Long form (setting, mean) of one metric for the bar plot."""
    if results is None:
        return pd.DataFrame({"setting": [], "mean": []})
    col = "rtf_mean" if metric == "rtf" else f"{metric}_mean"
    if col not in results.summary.columns:
        return pd.DataFrame({"setting": [], "mean": []})
    return pd.DataFrame({"setting": results.summary["setting"], "mean": results.summary[col]})


def _views(results: SuiteResults, metric: str) -> tuple[Any, ...]:
    grids = list(results.grids)
    return (results.run["id"], summary_table(results), metric_plot(results, metric), results.proxy.round(3),
            results.comparison.round(3), gr.update(choices=grids, value=grids[0] if grids else None),
            results.grids.get(grids[0]) if grids else None, list(results.files.values()) or None,
            results.to_dict())


def server_options(ctx: AppContext) -> Callable[[str, dict[str, Any]], Any]:
    """A suite setting's RunOptions as the server makes a request's: the API's options only,
    under its limits, job-timeout cap, encoder and work folder (jobs.service.parse_options)."""
    return lambda model, opts: parse_options(model, opts, settings=ctx.settings)


def _run_events(ctx: AppContext, suite: Any, user: str | None, source: str) -> Iterator[tuple[str, Any]]:
    """Run ``suite`` on a worker thread; yield ("update", (done, total, JobStatus)) then
    ("done", SuiteResults) or ("error", exception). Closing the iterator cancels the run."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            res = run_suite(suite, store=ctx.store, executor=ctx.executor, source=source, user=user,
                            on_update=lambda d, t, s: events.put(("update", (d, t, s))), cancel=stop.is_set,
                            options_for=server_options(ctx))
            events.put(("done", res))
        except BaseException as exc:  # noqa: BLE001 - handed to the event's thread
            events.put(("error", exc))

    threading.Thread(target=work, name="suite-run", daemon=True).start()
    try:
        while True:
            kind, value = events.get()
            yield kind, value
            if kind != "update":
                return
    finally:
        stop.set()


class RunResultsCache:
    """The Suites tab's run results, for reviewers only (on a public Space). A run that has
    ended no longer changes, so its results are built once (not again when the tab's plot
    metric or clip changes); the newest KEEP ended runs are kept."""

    KEEP = 8

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._ended: OrderedDict[str, SuiteResults] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_text: str | None, request: gr.Request | None,
            profile: gr.OAuthProfile | None = None) -> SuiteResults:
        key = (run_text or "").strip()
        with user_errors("suite results"):
            reviewers_only(self.ctx, request, profile, "Model suites")
            with self._lock:
                if key in self._ended:
                    self._ended.move_to_end(key)
                    return self._ended[key]
            res = suite_results(self.ctx.store, key)
        if res.run.get("status") != "running":
            with self._lock:
                self._ended[key] = res
                while len(self._ended) > self.KEEP:
                    self._ended.popitem(last=False)
        return res


def build_suites_tab(ctx: AppContext) -> None:
    """The Suites tab (inside a gr.Tab) with /suite_run and /suite_results."""
    gr.Markdown("Run every clip under every setting; each job is kept in the History with its suite and "
                "run id. A suite file (YAML or CSV) can be uploaded with the clips it names, or clips alone "
                "with the settings below; a server folder must be inside the data folder.")
    with gr.Row():
        files = gr.File(label="Suite file and/or clips", file_count="multiple", type="filepath",
                        elem_id="suite-files")
        with gr.Column():
            folder = gr.Textbox(label="Or a server folder of clips (under the data folder)")
            settings = gr.Textbox(label="Settings, comma-separated (replace a suite file's; default for clips "
                                        f"and folders: {DEFAULT_SETTINGS})", placeholder=DEFAULT_SETTINGS,
                                  elem_id="suite-settings")
            name = gr.Textbox(label="Suite name (CSV and folders; default: the file or folder name)")
            example = gr.Checkbox(False, label="Run the example suite shipped with the app")
    run_btn = gr.Button("Run suite", variant="primary", elem_id="suite-run")
    progress_md = gr.Markdown(elem_id="suite-progress")
    status = gr.Dataframe(status_table({}), label="Jobs", interactive=False, wrap=True, elem_id="suite-jobs")
    with gr.Row():
        run_id = gr.Textbox(label="Run id", elem_id="suite-run-id")
        load_btn = gr.Button("Show run")
    summary = gr.Dataframe(label="Per setting: mean [95% bootstrap CI] over succeeded jobs", interactive=False,
                           wrap=True, elem_id="suite-summary")
    metric = gr.Dropdown(list(PLOT_METRICS), value="psnr_full", label="Plot")
    plot = gr.BarPlot(x="setting", y="mean", label="Mean per setting", elem_id="suite-plot")
    proxy = gr.Dataframe(label="Ranked by the sync proxy (the baseline is never ranked on it)", interactive=False)
    compare = gr.Dataframe(label="Against the previous run (LSE-D moved > 5% or more failures)", interactive=False)
    with gr.Row():
        clip = gr.Dropdown([], label="Grid of clip")
        grid = gr.Video(label="Original | each setting (same audio)", interactive=False, elem_id="suite-grid")
    exports = gr.File(label="Exports (summary CSV/JSON, jobs CSV)", interactive=False)
    results_json = gr.JSON(visible=False)
    outputs = [run_id, summary, plot, proxy, compare, clip, grid, exports, results_json]

    def run(up: list[str] | None, folder_text: str, settings_text: str, suite_name: str, use_example: bool,
            metric_name: str, request: gr.Request, profile: gr.OAuthProfile | None = None,
            progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:
        """Run a suite; yields progress, then the results."""
        with user_errors("suite run"):
            reviewers_only(ctx, request, profile, "Model suites")
        for out in stream(ctx, up, folder_text, settings_text, suite_name, use_example, metric_name,
                          user=getattr(request, "username", None), source="app", progress=progress):
            yield out[:2] + out[3:]  # the tab keeps the run id, not the results (no gr.State: see below)

    results = RunResultsCache(ctx)

    def show(run_text: str, metric_name: str, request: gr.Request,
             profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
        return _views(results.get(run_text, request, profile), metric_name)

    def replot(run_text: str, metric_name: str, request: gr.Request,
               profile: gr.OAuthProfile | None = None) -> pd.DataFrame:
        return metric_plot(results.get(run_text, request, profile) if (run_text or "").strip() else None,
                           metric_name)

    def pick(run_text: str, pair: str | None, request: gr.Request,
             profile: gr.OAuthProfile | None = None) -> str | None:
        if not (run_text or "").strip() or not pair:
            return None
        return results.get(run_text, request, profile).grids.get(pair)

    inputs = [files, folder, settings, name, example, metric]
    # a gr.State here would open Gradio's heartbeat stream on every page (the page never idles)
    run_btn.click(run, inputs=inputs, outputs=[progress_md, status, *outputs], api_name="suite_run_ui",
                  api_visibility="private", concurrency_id=GENERATION_GROUP,
                  concurrency_limit=ctx.settings.max_jobs)
    read = {"concurrency_id": READ_GROUP, "concurrency_limit": None, "api_visibility": "private"}
    load_btn.click(show, inputs=[run_id, metric], outputs=outputs, **read)
    metric.change(replot, inputs=[run_id, metric], outputs=[plot], **read)
    clip.change(pick, inputs=[run_id, clip], outputs=[grid], **read)
    _build_api(ctx, results)


def stream(ctx: AppContext, up: list[str] | None, folder_text: str, settings_text: str, suite_name: str,
           use_example: bool, metric_name: str, *, user: str | None, source: str,
           progress: gr.Progress) -> Iterator[tuple[Any, ...]]:
    """The suite run's updates as the tab's outputs: (progress text, jobs table, results or
    skip, *the result views or skips)."""
    with user_errors("suite run"):
        suite = suite_from_request(ctx.settings.data_dir, files=up, folder=folder_text, settings=settings_text,
                                   name=suite_name, example=use_example, options_for=server_options(ctx))
    states: dict[int, JobStatus] = {}
    skip = [gr.skip()] * N_VIEWS
    for kind, value in _run_events(ctx, suite, user, source):
        if kind == "update":
            done, total, state = value
            states[state.position] = state
            progress(done / total, desc=f"{done}/{total} jobs")
            failed = sum(s.status == "failed" for s in states.values())
            yield (f"**{suite.name}**: {done}/{total} jobs done, {failed} failed", status_table(states),
                   gr.skip(), *skip)
        elif kind == "error":
            with user_errors("suite run"):
                raise value
        else:
            failed = sum(s.status == "failed" for s in states.values())
            yield (f"**{suite.name}**: finished, {len(states)} jobs, {failed} failed", status_table(states),
                   value, *_views(value, metric_name))


def _build_api(ctx: AppContext, results: RunResultsCache) -> None:
    """/suite_run and /suite_results for gradio_client (hidden components)."""
    with gr.Column(visible=False):
        a_files = gr.File(file_count="multiple", type="filepath", label="suite file and/or clips")
        a_folder = gr.Textbox(label="server folder")
        a_settings = gr.Textbox(label="settings (empty: the suite file's, or the default)")
        a_name = gr.Textbox(label="suite name")
        a_example = gr.Checkbox(False, label="example suite")
        a_out = gr.JSON(label="results")
        a_run_id = gr.Textbox(label="run id")
        run_btn = gr.Button("suite_run")
        res_btn = gr.Button("suite_results")

    def suite_run(up: list[str] | None, folder_text: str, settings_text: str, suite_name: str,
                  use_example: bool, request: gr.Request, profile: gr.OAuthProfile | None = None,
                  progress: gr.Progress = gr.Progress()) -> dict[str, Any]:
        """Run a suite (uploads, a server folder under the data folder, or the example suite);
        returns the run's results as JSON: summary per setting with 95% CIs, proxy ranking,
        comparison with the previous run, jobs, grids and exports."""
        with user_errors("suite run"):
            reviewers_only(ctx, request, profile, "Model suites")
        final: dict[str, Any] = {}
        for out in stream(ctx, up, folder_text, settings_text, suite_name, use_example, "psnr_full",
                          user=getattr(request, "username", None), source="api", progress=progress):
            if isinstance(out[2], SuiteResults):
                final = out[2].to_dict()
        return json.loads(json.dumps(final, default=str))

    def run_results(run_text: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> dict[str, Any]:
        """The results of one suite run (see /suite_run) by run id."""
        return json.loads(json.dumps(results.get(run_text, request, profile).to_dict(), default=str))

    run_btn.click(suite_run, inputs=[a_files, a_folder, a_settings, a_name, a_example], outputs=[a_out],
                  api_name="suite_run", concurrency_id=GENERATION_GROUP, concurrency_limit=ctx.settings.max_jobs)
    res_btn.click(run_results, inputs=[a_run_id], outputs=[a_out], api_name="suite_results",
                  concurrency_id=READ_GROUP, concurrency_limit=None)
