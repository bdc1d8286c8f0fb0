"""Running a suite: every pair under every setting through the jobs layer, one process.

:func:`plan_suite` checks everything before any job runs (media present, each setting a
valid RunOptions); :func:`run_suite` records a suite run, runs each job with
``jobs.lifecycle.run_recorded`` on one executor (so models load once per process and are
shared by all the jobs), records a failed job with its reason and goes on, then writes the
per-clip grid videos and the exports. :func:`suite_results` rebuilds a run's results
(summary with CIs, proxy ranking, comparison with the previous run) from the history.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eval.suite_stats import aggregate, compare_runs, proxy_ranking
from eval.suites import Pair, Setting, Suite, SuiteError, check_media
from jobs.executors import Executor, InProcessExecutor
from jobs.grid import write_grid
from jobs.lifecycle import run_recorded
from pipeline.errors import JobCancelled
from pipeline.options import RunOptions
from storage import suites as runs
from storage.jobs import JobStore

log = logging.getLogger(__name__)

SUITES_FOLDER = "suites"  # <data_dir>/suites/<run id>/: grids and exports of a run
SUMMARY_CSV, SUMMARY_JSON, JOBS_CSV = "summary.csv", "summary.json", "jobs.csv"


@dataclass(frozen=True)
class SuiteJob:
    """One job of a suite: a pair under a setting, with the RunOptions it runs with."""

    position: int
    pair: Pair
    setting: Setting
    options: RunOptions


@dataclass(frozen=True)
class JobStatus:
    """A suite job's live state, as progress reports and tables show it."""

    position: int
    pair: str
    setting: str
    status: str  # queued | running | succeeded | failed
    job_id: str | None = None
    error: str | None = None


UpdateFn = Callable[[int, int, JobStatus], None]  # (jobs done, jobs in all, this job's state)
OptionsFn = Callable[[str, dict[str, Any]], RunOptions]  # (model, a setting's options) -> the job's options


@dataclass(frozen=True)
class SuiteResults:
    """A run's results: the summary per setting (means, 95% CIs, RTF, failures), the ranking
    by the sync proxy, the comparison with the previous run, the jobs, grids and exports."""

    run: dict[str, Any]
    jobs: pd.DataFrame
    summary: pd.DataFrame
    proxy: pd.DataFrame
    comparison: pd.DataFrame
    previous_run_id: str | None
    grids: dict[str, str] = field(default_factory=dict)  # pair -> grid video
    files: dict[str, str] = field(default_factory=dict)  # export name -> path

    def to_dict(self) -> dict[str, Any]:
        def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(frame.to_json(orient="records"))

        jobs = self.jobs.drop(columns=["output_path"], errors="ignore")
        return {"run_id": self.run["id"], "suite": self.run["suite"], "status": self.run["status"],
                "created_at": self.run["created_at"], "summary": rows(self.summary),
                "proxy_ranking": rows(self.proxy), "comparison": rows(self.comparison),
                "previous_run_id": self.previous_run_id, "jobs": rows(jobs), "grids": dict(self.grids),
                "files": dict(self.files)}


def run_folder(store: JobStore, run_id: str) -> Path:
    return Path(store.data_dir) / SUITES_FOLDER / runs.get_run(store, run_id)["id"]


def plan_suite(suite: Suite, *, options_for: OptionsFn | None = None) -> list[SuiteJob]:
    """Every (pair, setting) job with its RunOptions, checked before any runs: SuiteError
    names a missing media file or a setting whose options are not valid.

    ``options_for(model, options)`` makes a setting's RunOptions: a server passes its own
    (``jobs.service.parse_options`` with its settings: the options a request may set, its
    limits, timeout cap, encoder and work folder); by default ``RunOptions(model, **options)``."""
    check_media(suite)
    make = options_for or _plain_options
    options = {}
    for s in suite.settings:
        try:
            options[s.name] = make(s.model, dict(s.options))
        except (TypeError, ValueError) as exc:
            raise SuiteError(f"setting {s.name!r} is not valid: {exc}", source=suite.source or suite.name,
                             field_name=f"settings.{s.name}") from None
    return [SuiteJob(i * len(suite.settings) + j, p, s, options[s.name])
            for i, p in enumerate(suite.pairs) for j, s in enumerate(suite.settings)]


def _plain_options(model: str, options: dict[str, Any]) -> RunOptions:
    return RunOptions(model=model, **options)


def run_suite(suite: Suite, *, store: JobStore, executor: Executor | None = None, source: str = "cli",
              user: str | None = None, on_update: UpdateFn | None = None, grids: bool = True,
              options_for: OptionsFn | None = None, cancel: Callable[[], bool] | None = None) -> SuiteResults:
    """Run every job of ``suite`` (see :func:`plan_suite`), recorded with the run id; a job
    that fails is recorded failed and the run goes on. Returns :func:`suite_results`."""
    plan = plan_suite(suite, options_for=options_for)
    executor = executor or InProcessExecutor()
    run_id = runs.create_run(store, suite=suite.name, definition=suite.to_dict(), total_jobs=len(plan),
                             source=source, user=user)
    log.info("suite %s run %s: %d jobs", suite.name, run_id, len(plan))
    try:
        for done, job in enumerate(plan):
            state = _run_one(job, run_id, store=store, executor=executor, source=source, user=user,
                             cancel=cancel, on_update=lambda s, d=done: on_update and on_update(d, len(plan), s))
            if on_update is not None:
                on_update(done + 1, len(plan), state)
        grid_paths = write_grids(store, run_id, suite) if grids else {}
    except BaseException:
        runs.finish_run(store, run_id, summary={"jobs": len(plan)}, status="interrupted")
        raise
    runs.finish_run(store, run_id, summary={"jobs": len(plan), "grids": grid_paths})
    return export_results(store, run_id)


def _run_one(job: SuiteJob, run_id: str, *, store: JobStore, executor: Executor, source: str,
             user: str | None, cancel: Callable[[], bool] | None,
             on_update: Callable[[JobStatus], Any]) -> JobStatus:
    ids: list[str] = []

    def link(job_id: str) -> None:
        ids.append(job_id)
        runs.add_job(store, run_id, job_id, pair=job.pair.name, setting=job.setting.name,
                     model=job.setting.model, position=job.position)
        on_update(JobStatus(job.position, job.pair.name, job.setting.name, "running", job_id))

    try:
        run_recorded(job.pair.video, job.pair.audio, options=job.options, source=source, user=user,
                     store=store, score=True, on_job_id=link, executor=executor, cancel=cancel)
    except JobCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded failed by run_recorded; the suite goes on
        log.warning("suite job %s x %s failed: %s: %s", job.pair.name, job.setting.name, type(exc).__name__, exc)
        return JobStatus(job.position, job.pair.name, job.setting.name, "failed", ids[0] if ids else None,
                         f"{type(exc).__name__}: {exc}")
    return JobStatus(job.position, job.pair.name, job.setting.name, "succeeded", ids[0] if ids else None)


def write_grids(store: JobStore, run_id: str, suite: Suite) -> dict[str, str]:
    """One grid video per pair under the run's folder; a pair whose grid fails is logged."""
    jobs = runs.run_jobs_frame(store, run_id)
    folder = run_folder(store, run_id)
    out: dict[str, str] = {}
    for i, pair in enumerate(suite.pairs):
        rows = jobs[jobs["pair"] == pair.name].set_index("setting")
        results = [(s.name, rows.at[s.name, "output_path"] if s.name in rows.index and
                    rows.at[s.name, "status"] == "succeeded" else None) for s in suite.settings]
        path = folder / f"grid_{i:03d}.mp4"
        try:
            write_grid(pair.video, results, pair.audio, path)
        except Exception as exc:  # noqa: BLE001 - a grid is a view; the run's records stand
            log.warning("no grid for %s: %s: %s", pair.name, type(exc).__name__, exc)
            continue
        out[pair.name] = os.fspath(path)
    return out


def suite_results(store: JobStore, run_id: str) -> SuiteResults:
    """A run's results from the history (any run, finished or not)."""
    run = runs.get_run(store, run_id)
    settings = [s["name"] for s in run["definition"].get("settings", [])]
    jobs = runs.run_jobs_frame(store, run["id"])
    summary = aggregate(jobs, settings=settings)
    prev = runs.previous_run(store, run)
    previous = aggregate(runs.run_jobs_frame(store, prev["id"])) if prev else pd.DataFrame()
    folder = Path(store.data_dir) / SUITES_FOLDER / run["id"]
    grids = run["summary"].get("grids", {})
    files = {name: os.fspath(folder / name) for name in (SUMMARY_CSV, SUMMARY_JSON, JOBS_CSV)
             if (folder / name).is_file()}
    return SuiteResults(run=run, jobs=jobs, summary=summary, proxy=proxy_ranking(summary),
                        comparison=compare_runs(summary, previous), previous_run_id=prev["id"] if prev else None,
                        grids={k: v for k, v in grids.items() if os.path.isfile(v)}, files=files)


def export_results(store: JobStore, run_id: str) -> SuiteResults:
    """Write the run's summary (CSV, JSON) and jobs (CSV) into its folder; return the results."""
    results = suite_results(store, run_id)
    folder = run_folder(store, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    results.summary.to_csv(folder / SUMMARY_CSV, index=False)
    results.jobs.to_csv(folder / JOBS_CSV, index=False)
    (folder / SUMMARY_JSON).write_text(json.dumps(results.to_dict(), indent=2, default=str))
    return dataclasses.replace(results, files={name: os.fspath(folder / name)
                                               for name in (SUMMARY_CSV, SUMMARY_JSON, JOBS_CSV)})


UPLOADS_FOLDER = "uploads"  # <data_dir>/suites/uploads/<random>/: a request's suite files
SUITE_EXTS = (".yaml", ".yml", ".csv")
DEFAULT_SETTINGS = "baseline, passthrough"  # for clips uploaded or found without a suite file


def _within(path: str, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == r or r in real.parents for r in roots)


def _uploaded_suite(target: Path, files: list[str], *, chosen: Any, fallback: Any, name: str | None) -> Suite:
    """The suite of ``files`` copied into ``target``: its one suite file, or the clips alone."""
    from eval.suites import load_suite

    for f in files:
        shutil.copyfile(f, target / Path(f).name)
    defs = sorted(p for p in target.iterdir() if p.suffix.lower() in SUITE_EXTS)
    if len(defs) > 1:
        raise SuiteError("give one suite file at a time", source="uploads", field_name="files")
    is_yaml = bool(defs) and defs[0].suffix.lower() != ".csv"
    return load_suite(defs[0] if defs else target, settings=chosen if is_yaml else chosen or fallback,
                      name=name or (defs[0].stem if defs else "uploads"))


def suite_from_request(data_dir: str | os.PathLike[str], *, files: list[str] | None = None,
                       folder: str | None = None, settings: str | None = None, name: str | None = None,
                       example: bool = False, options_for: OptionsFn | None = None) -> Suite:
    """The suite of an app or API request: the example suite, a server folder under the data
    folder, or uploads (a suite file with the clips it names, or clips alone). ``settings``
    replace a YAML file's; CSV files, folders and clips alone default to
    :data:`DEFAULT_SETTINGS`. Uploads are copied into one folder first, so a suite file's relative
    paths find the clips uploaded with it; every media path must lie under the data folder, and
    the suite is planned with ``options_for`` (:func:`plan_suite`): a refused suite leaves no
    uploaded copies behind."""
    from eval.suites import load_suite, settings_from_text
    from jobs.examples import ensure_example_suite

    data = Path(data_dir).resolve()
    chosen = settings_from_text(settings) if (settings or "").strip() else None
    fallback = settings_from_text(DEFAULT_SETTINGS)  # clips without a suite file
    if example:
        suite = load_suite(ensure_example_suite(data), settings=chosen)
    elif files:
        target = data / SUITES_FOLDER / UPLOADS_FOLDER / secrets.token_hex(8)
        target.mkdir(parents=True)
        try:
            suite = _uploaded_suite(target, files, chosen=chosen, fallback=fallback, name=name)
            return _checked(suite, data, options_for)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # a refused suite leaves no copies behind
            raise
    elif (folder or "").strip():
        if not _within(folder.strip(), [data]):
            raise SuiteError(f"a server folder must be inside the data folder {os.fspath(data)}",
                             source="request", field_name="folder")
        suite = load_suite(folder.strip(), settings=chosen or fallback, name=name or None)
    else:
        raise SuiteError("give a suite file or clips, a server folder, or choose the example suite",
                         source="request")
    return _checked(suite, data, options_for)


def _checked(suite: Suite, data: Path, options_for: OptionsFn | None) -> Suite:
    """``suite`` when every media path of its pairs lies under the data folder and it can be
    planned, else SuiteError."""
    for pair in suite.pairs:
        for key in ("video", "audio"):
            if not _within(getattr(pair, key), [data]):
                raise SuiteError(f"{key} {getattr(pair, key)!r} of pair {pair.name!r} is outside the data "
                                 f"folder: upload it with the suite file", source=suite.source,
                                 field_name=f"{pair.name}.{key}")
    plan_suite(suite, options_for=options_for)
    return suite
