"""storage.reports and the storage CLI on a known set of jobs with hand-computed answers.

The set (times from a fake clock, 2025-05-01 UTC):
- wav2lip: 5 succeeded in hour 10 (generate 1..5 s, run 10..50 s on 10 s outputs, LSE-D
  7.0 7.0 7.0 7.2 7.2), 1 failed NoFaceFound (hour 10), 1 interrupted (noticed in hour 12).
- baseline: 6 succeeded in hour 12 (generate 10 10 10 10 10 60 s, run 5 s on 10 s outputs,
  LSE-D 8 8 8 8 8.5 8.5), 1 failed InvalidMedia, 1 failed NoFaceFound, 1 cancelled.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storage import reports
from storage.jobs import JobStore

ROOT = Path(__file__).resolve().parents[1]
DAY = datetime(2025, 5, 1, tzinfo=timezone.utc)
RATE = 36.0  # $/GPU-hour: 1 GPU-second = $0.01


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _succeed(store: JobStore, clock: FakeClock, at: datetime, model: str, *, generate: float,
             run: float, lse_d: float) -> str:
    clock.now = at
    job_id = store.create(source="cli", inputs={"video": f"/in/{model}-{at:%H%M}.mp4"},
                          model_requested=model, hash_inputs=False)
    store.start(job_id)
    clock.now = at + timedelta(seconds=run)
    store.finish(job_id, model_used=model, output_duration_s=10.0,
                 stage_seconds={"probe": 0.5, "generate": generate}, stage_offsets={"probe": 0.0, "generate": 0.5},
                 scores=[{"metric": "lse_d", "value": lse_d}, {"metric": "lse_c", "value": None, "reason": "n/a"}])
    return job_id


def _end_badly(store: JobStore, clock: FakeClock, at: datetime, model: str, how: str) -> str:
    clock.now = at
    job_id = store.create(source="app", inputs={"video": f"/in/{model}-{how}.mp4"}, model_requested=model)
    store.start(job_id)
    clock.now = at + timedelta(minutes=1)
    if how == "cancel":
        store.cancel(job_id)
    elif how != "interrupt":
        store.fail(job_id, error_type=how, message=f"{how} at {at:%H:%M}")
    return job_id


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("reports")
    clock = FakeClock(DAY)
    with JobStore(data / "jobs.db", clock=clock) as store:
        for i, (gen, d) in enumerate(zip([1, 2, 3, 4, 5], [7.0, 7.0, 7.0, 7.2, 7.2])):
            _succeed(store, clock, DAY + timedelta(hours=10, minutes=5 * i), "wav2lip",
                     generate=gen, run=10.0 * (i + 1), lse_d=d)
        _end_badly(store, clock, DAY + timedelta(hours=10, minutes=40), "wav2lip", "NoFaceFound")
        lost = _end_badly(store, clock, DAY + timedelta(hours=10, minutes=45), "wav2lip", "interrupt")
        for i, (gen, d) in enumerate(zip([10, 10, 10, 10, 10, 60], [8, 8, 8, 8, 8.5, 8.5])):
            _succeed(store, clock, DAY + timedelta(hours=12, minutes=i), "baseline", generate=gen, run=5.0, lse_d=d)
        for minute, how in ((10, "InvalidMedia"), (11, "NoFaceFound"), (12, "cancel")):
            _end_badly(store, clock, DAY + timedelta(hours=12, minutes=minute), "baseline", how)
        with store.transaction() as db:  # its owner vanished without a trace
            db.execute("UPDATE jobs SET owner_pid = NULL WHERE id = ?", [lost])
        clock.now = DAY + timedelta(hours=12, minutes=30)
        assert store.recover() == [lost]
    return data


@pytest.fixture(scope="module")
def rep(data_dir: Path) -> reports.Report:
    return reports.build_report(data_dir / "jobs.db", window=2, gpu_hour_usd=RATE)


def test_history_frame_and_filters(data_dir: Path, rep: reports.Report) -> None:
    h = rep.history
    assert len(h) == 16 and h["created_at"].is_monotonic_decreasing
    assert str(h["created_at"].dt.tz) == "UTC"
    assert h["status"].value_counts().to_dict() == {"succeeded": 11, "failed": 3, "interrupted": 1, "cancelled": 1}
    db = data_dir / "jobs.db"
    assert len(reports.history_frame(db, status="succeeded", model="baseline")) == 6
    assert len(reports.history_frame(db, since="2025-05-01T11:00", until="2025-05-01T12:05")) == 5
    assert list(reports.history_frame(db, text="wav2lip-NoFace")["error_type"]) == ["NoFaceFound"]


def test_stage_percentiles_are_exact(rep: reports.Report) -> None:
    sp = rep.stage_percentiles
    assert list(sp.index) == [("baseline", "probe"), ("baseline", "generate"),
                              ("wav2lip", "probe"), ("wav2lip", "generate")]  # pipeline order
    assert sp.loc[("wav2lip", "generate")].to_dict() == {"n": 5, "p50": 3.0, "p95": pytest.approx(4.8, abs=1e-12),
                                                         "mean": 3.0}
    # sorted 10 10 10 10 10 60: rank 0.95 * 5 = 4.75 -> 10 + 0.75 * 50
    assert sp.loc[("baseline", "generate"), "p95"] == pytest.approx(47.5, abs=1e-12)
    assert sp.loc[("baseline", "generate"), "p50"] == 10.0
    assert sp.loc[("baseline", "probe"), "p95"] == 0.5


def test_throughput_failure_rates_and_errors(rep: reports.Report) -> None:
    tp = rep.throughput
    hours = [DAY + timedelta(hours=h) for h in (10, 11, 12)]
    assert list(tp.index) == [pd.Timestamp(t) for t in hours]
    assert tp.to_dict("list") == {"jobs": [6, 0, 10], "succeeded": [5, 0, 6], "failed": [1, 0, 2],
                                  "interrupted": [0, 0, 1], "cancelled": [0, 0, 1]}
    fr = rep.failure_rates
    assert fr.loc["wav2lip", "failure_rate"] == pytest.approx(2 / 7, abs=1e-15)
    assert fr.loc["baseline", "failure_rate"] == 0.25 and fr.loc["baseline", "cancelled"] == 1
    assert fr.loc["(all)"].to_dict() == {"jobs": 15, "failed": 3, "interrupted": 1, "cancelled": 1,
                                         "failure_rate": pytest.approx(4 / 15, abs=1e-15)}
    te = rep.top_errors
    assert list(te["error_type"]) == ["NoFaceFound", "Interrupted", "InvalidMedia"]
    assert list(te["count"]) == [2, 1, 1] and list(te["share"]) == [0.5, 0.25, 0.25]
    assert te.loc[0, "last_message"] == "NoFaceFound at 12:11"  # the newest of its type


def test_realtime_factor_and_cost(rep: reports.Report, monkeypatch: pytest.MonkeyPatch) -> None:
    rtf = rep.realtime_factor
    assert rtf.loc["wav2lip"].to_dict() == {"n": 5, "p50": 3.0, "p95": pytest.approx(4.8, abs=1e-12), "mean": 3.0}
    assert rtf.loc["baseline"].to_dict() == {"n": 6, "p50": 0.5, "p95": 0.5, "mean": 0.5}
    costs = rep.costs.set_index("id")
    assert len(costs) == 11 and int(costs["over_target"].sum()) == 1
    assert sorted(costs["cost_usd"].round(12)) == [0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.6]
    cs = rep.cost_summary
    assert cs.loc["wav2lip", "mean_usd"] == pytest.approx(0.03, abs=1e-12)
    assert cs.loc["wav2lip", "p95_usd"] == pytest.approx(0.048, abs=1e-12)
    assert cs.loc["baseline", "max_usd"] == pytest.approx(0.6, abs=1e-12)
    assert cs.loc["baseline", "over_target"] == 1 and cs.loc["wav2lip", "over_target"] == 0
    monkeypatch.setenv("LIPSYNC_GPU_HOUR_USD", "3.6")
    assert reports.cost_per_job(rep.history)["cost_usd"].max() == pytest.approx(0.06, abs=1e-12)
    monkeypatch.setenv("LIPSYNC_GPU_HOUR_USD", "free")
    with pytest.raises(ValueError, match="LIPSYNC_GPU_HOUR_USD='free' is not a price"):
        reports.cost_per_job(rep.history)


def test_lse_d_trend_flags_a_move_over_five_percent(rep: reports.Report) -> None:
    tr = rep.trends.set_index(["model", "window"])
    # baseline, windows of 2 newest-aligned: [8, 8] [8, 8] [8.5, 8.5]: +6.25% -> alert (worse)
    assert list(tr.loc["baseline", "mean"]) == [8.0, 8.0, 8.5]
    assert tr.loc[("baseline", 2), "change"] == pytest.approx(0.0625, abs=1e-12)
    assert tr.loc[("baseline", 2), "alert"] and tr.loc[("baseline", 2), "worse"]
    assert not tr.loc[("baseline", 1), "alert"]
    # wav2lip: [7.0] [7.0, 7.0] [7.2, 7.2]: +2.86% -> no alert
    assert list(tr.loc["wav2lip", "n"]) == [1, 2, 2]
    assert tr.loc[("wav2lip", 2), "change"] == pytest.approx(7.2 / 7.0 - 1, abs=1e-12)
    assert not tr["alert"].loc["wav2lip"].any()
    assert list(rep.alerts["model"]) == ["baseline"]
    assert np.isnan(tr.loc[("wav2lip", 0), "change"])


def test_trend_edge_cases_on_hand_made_frames() -> None:
    frame = pd.DataFrame({"job_id": list("abcd"), "metric": "lse_d", "value": [8.0, 8.0, 7.0, 7.0],
                          "model": "m", "created_at": pd.date_range("2025-01-01", periods=4, tz="UTC")})
    better = reports.score_trends(frame, window=2)
    assert better["alert"].tolist() == [False, True] and better["worse"].tolist() == [False, False]
    assert reports.score_trends(frame, window=2, alert_on="worse")["alert"].tolist() == [False, False]
    psnr = frame.assign(metric="psnr_full")  # higher is better: a drop is the regression
    assert reports.score_trends(psnr, metric="psnr_full", window=2)["worse"].tolist() == [False, True]
    with pytest.raises(ValueError, match="window must be at least 1"):
        reports.score_trends(frame, window=0)


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "storage", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "LIPSYNC_DATA_DIR": str(data_dir)}, timeout=120)


def test_cli_history_filters_and_csv(data_dir: Path, rep: reports.Report, tmp_path: Path) -> None:
    out = _cli(data_dir, "history", "--status", "succeeded", "--model", "wav2lip", "--since", "2025-05-01")
    assert out.returncode == 0, out.stderr
    ok_ids = set(rep.history.query("status == 'succeeded' and model == 'wav2lip'")["id"])
    assert {line.split()[0] for line in out.stdout.splitlines()[1:-1]} == ok_ids
    assert out.stdout.rstrip().endswith("5 of 5 matching jobs")
    target = tmp_path / "hist.csv"
    out = _cli(data_dir, "history", "--model", "baseline", "--csv", str(target))
    assert out.returncode == 0 and "wrote 9 jobs" in out.stdout
    with open(target, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["id"] for r in rows} == set(rep.history.query("model == 'baseline'")["id"])
    assert {r["status"] for r in rows} == {"succeeded", "failed", "cancelled"}
    out = _cli(data_dir, "history", "--since", "2025-06-01")
    assert out.returncode == 0 and "0 of 0 matching jobs" in out.stdout
    out = _cli(data_dir, "history", "--text", "%'; DROP TABLE jobs; --")
    assert out.returncode == 0 and "0 of 0 matching jobs" in out.stdout
    out = _cli(data_dir, "history", "--since", "yesterday-ish")
    assert out.returncode == 2 and "not a date or ISO time" in out.stderr


def test_cli_report_prints_every_section(data_dir: Path) -> None:
    out = _cli(data_dir, "report", "--window", "2", "--gpu-hour-usd", "36")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for title in ("Jobs: 16", "Seconds per stage", "Throughput per hour", "Failure rate", "Top error types",
                  "Real-time factor", "Cost per job at $36.00/GPU-hour (target < $0.50)", "lse_d trend"):
        assert title in text
    assert "47.500" in text and "4.800" in text and "0.267" in text  # p95s and the overall failure rate
    alerts = [line for line in text.splitlines() if line.startswith("QUALITY ALERT")]
    assert len(alerts) == 1 and alerts[0].startswith("QUALITY ALERT: baseline mean lse_d 8.500 moved +6.")
    empty = _cli(data_dir / "nothing-here", "report")
    assert empty.returncode == 0 and "no job history" in empty.stderr
