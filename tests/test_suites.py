"""Suites: definitions refused with line and field, the runner through the real jobs layer
(real generation with the weights-free baseline and passthrough, real ffmpeg, real SQLite),
aggregates checked against a direct pandas computation from the recorded rows, grid videos,
failed clips, the comparison with an earlier run and the proxy rule for the baseline."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from suite_media import N_FRAMES, face_clip, no_face_clip, write_suite
from eval.suite_stats import PROXY_NOTE, aggregate, bootstrap_ci, compare_runs, proxy_ranking
from eval.suites import SuiteError, load_suite, parse_yaml, settings_from_text
from jobs.grid import LABEL_H, label_band
from jobs.suites import plan_suite, run_suite, suite_results
from pipeline.media.decode import read_frames
from pipeline.media.probe import probe
from storage.jobs import JobStore

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["psnr_full", "ssim_full", "psnr_face", "ssim_face", "sync_proxy_corr"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three face clips with their own speech, and one with no face."""
    d = tmp_path_factory.mktemp("clips")
    for i in range(3):
        face_clip(d, f"clip{i}", i)
    no_face_clip(d)
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> JobStore:
    d = tmp_path_factory.mktemp("suite_db")
    with JobStore(d / "jobs.db", data_dir=d, recover=False, retention=False) as s:
        yield s


@pytest.fixture(scope="module")
def done(clips: Path, store: JobStore):  # noqa: ANN201 - jobs.suites.SuiteResults
    suite = load_suite(write_suite(clips, ["clip0", "clip1", "clip2"]))
    updates = []
    res = run_suite(suite, store=store, on_update=lambda d, t, s: updates.append((d, t, s.status)))
    return res, updates


def _recorded_rows(db_path: Path, run_id: str) -> pd.DataFrame:
    """The run's job rows straight from SQLite, one column per metric (the oracle)."""
    with sqlite3.connect(db_path) as conn:
        rows = pd.read_sql("SELECT s.setting, j.id, j.status, j.run_s, j.output_duration_s FROM suite_jobs s "
                           "JOIN jobs j ON j.id = s.job_id WHERE s.run_id = ?", conn, params=[run_id])
        scores = pd.read_sql("SELECT job_id, metric, value FROM job_scores", conn)
    wide = scores.pivot(index="job_id", columns="metric", values="value")
    return rows.merge(wide, left_on="id", right_index=True, how="left")


def test_three_clips_aggregates_equal_a_direct_pandas_computation(done, store: JobStore) -> None:
    res, updates = done
    rows = _recorded_rows(store.path, res.run["id"])
    assert len(rows) == 6 and set(rows["status"]) == {"succeeded"}
    assert res.run["status"] == "finished"
    assert [u[:2] for u in updates if u[2] != "running"] == [(i, 6) for i in range(1, 7)]
    ok = rows[rows["status"] == "succeeded"]
    expected = ok.groupby("setting")[METRICS].mean()
    summary = res.summary.set_index("setting")
    assert list(summary.index) == ["baseline", "passthrough"]
    for setting in expected.index:
        for m in METRICS:
            assert summary.at[setting, f"{m}_mean"] == pytest.approx(expected.at[setting, m], rel=1e-12)
            values = ok[ok["setting"] == setting][m]
            eps = 1e-9  # the bootstrap's extreme resample is the min (max) up to rounding
            assert values.min() - eps <= summary.at[setting, f"{m}_ci_low"] <= summary.at[setting, f"{m}_mean"]
            assert summary.at[setting, f"{m}_mean"] <= summary.at[setting, f"{m}_ci_high"] <= values.max() + eps
        rtf = (ok["run_s"] / ok["output_duration_s"])[ok["setting"] == setting].mean()
        assert summary.at[setting, "rtf_mean"] == pytest.approx(rtf)
        assert summary.at[setting, "failed"] == 0 and summary.at[setting, "jobs"] == 3
    # the baseline is never ranked on the proxy: it drives the mouth with what the proxy reads
    proxy = res.proxy.set_index("setting")
    assert pd.isna(proxy.at["baseline", "rank"]) and proxy.at["baseline", "note"] == PROXY_NOTE
    assert proxy.at["passthrough", "rank"] == 1
    for name in ("summary.csv", "summary.json", "jobs.csv"):
        assert Path(res.files[name]).is_file()
    assert pd.read_csv(res.files["summary.csv"])["setting"].tolist() == ["baseline", "passthrough"]


def test_grid_video_layout_length_and_labels(done) -> None:
    res, _ = done
    assert sorted(res.grids) == ["clip0", "clip1", "clip2"]
    grid = res.grids["clip1"]
    info = probe(grid)
    tile_h = 192  # the clips are 192 px: never upscaled
    assert info.video.display_size == (3 * 192, LABEL_H + tile_h)
    assert info.audio is not None
    assert info.duration_s == pytest.approx(N_FRAMES / 25, abs=0.1)  # as long as the speech
    frames = list(read_frames(grid))
    assert abs(len(frames) - N_FRAMES) <= 1
    frame = frames[10].astype(np.int16)
    labels = ["original", "baseline", "passthrough"]
    for i, label in enumerate(labels):
        band = frame[:LABEL_H, i * 192:(i + 1) * 192]
        right = np.abs(band - label_band(label, 192)).mean()
        wrong = np.abs(band - label_band(labels[(i + 1) % 3], 192)).mean()
        assert right < 4 and wrong > 2 * right, (label, right, wrong)
    # the original tile is the original clip; the passthrough tile matches it
    original = next(iter(read_frames(str(Path(res.run["definition"]["pairs"][1]["video"])))))
    assert np.abs(frames[0][LABEL_H:, :192].astype(np.int16) - original).mean() < 6


def test_failing_clip_is_recorded_failed_and_the_suite_finishes(clips: Path, store: JobStore) -> None:
    suite = load_suite(write_suite(clips, ["noface", "clip0"], name="with-failure"))
    res = run_suite(suite, store=store, grids=False)
    assert res.run["status"] == "finished"
    jobs = res.jobs.set_index(["pair", "setting"])
    assert jobs.at[("noface", "baseline"), "status"] == "failed"
    assert jobs.at[("noface", "baseline"), "error_type"] == "NoFaceFound"
    assert "no face" in jobs.at[("noface", "baseline"), "error_message"].lower()
    # the passthrough tracks no face, so it runs; the later clip runs under both settings
    for key in (("noface", "passthrough"), ("clip0", "baseline"), ("clip0", "passthrough")):
        assert jobs.at[key, "status"] == "succeeded"
    summary = res.summary.set_index("setting")
    assert summary.at["baseline", "failed"] == 1 and summary.at["baseline", "succeeded"] == 1


def test_malformed_suite_refused_with_line_and_field(tmp_path: Path) -> None:
    text = "name: bad\npairs:\n  - name: one\n    video: a.mp4\n  - video: b.mp4\n    audio: b.wav\nsettings: [baseline]\n"
    with pytest.raises(SuiteError) as info:
        parse_yaml(text, base_dir=tmp_path, source="bad.yaml")
    assert info.value.line == 3 and info.value.field_name == "pairs[0].audio"
    assert "bad.yaml line 3, field pairs[0].audio" in str(info.value)
    with pytest.raises(SuiteError) as info:
        parse_yaml("name: x\npairs: [{video: a.mp4, audio: a.wav}]\nsettings:\n  - baseline\n  - wav2lip bogus=1\n",
                   base_dir=tmp_path)
    assert info.value.line == 5 and info.value.field_name == "settings[1]" and "bogus" in str(info.value)
    with pytest.raises(SuiteError) as info:
        parse_yaml("name: x\npairs: [\n", base_dir=tmp_path)
    assert info.value.line is not None and "YAML" in str(info.value)
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("video,audio\na.mp4,a.wav\nb.mp4,\n")
    with pytest.raises(SuiteError) as info:
        load_suite(csv_path, settings=settings_from_text("baseline"), check_files=False)
    assert info.value.line == 3 and info.value.field_name == "pairs[1].audio"


def test_settings_text_keeps_commas_inside_option_values() -> None:
    settings = settings_from_text("baseline, baseline pads=0,20,0,0 crf=30\npassthrough")
    assert [s.name for s in settings] == ["baseline", "baseline pads=0,20,0,0 crf=30", "passthrough"]
    assert dict(settings[1].options) == {"pads": (0, 20, 0, 0), "crf": 30}


def test_missing_media_or_unknown_setting_refused_before_any_job(clips: Path, tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.db", data_dir=tmp_path, recover=False, retention=False) as s:
        missing = write_suite(clips, ["clip0"], name="missing")
        missing.write_text(missing.read_text().replace("clip0.wav", "nowhere.wav"))
        with pytest.raises(SuiteError, match="nowhere.wav"):
            run_suite(load_suite(missing, check_files=False), store=s)
        with pytest.raises(SuiteError, match="unknown model 'nosuchmodel'") as info:
            load_suite(write_suite(clips, ["clip0"], settings="[baseline, nosuchmodel]", name="unknown"))
            assert info.value.line == 6 and info.value.field_name == "settings[1]"
        bad_value = load_suite(write_suite(clips, ["clip0"], settings="['baseline crf=99']", name="v"))
        with pytest.raises(SuiteError, match="crf"):
            run_suite(bad_value, store=s)
        with s.connection() as db:
            assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
            assert db.execute("SELECT count(*) FROM suite_runs").fetchone()[0] == 0
    assert len(plan_suite(load_suite(write_suite(clips, ["clip0", "clip1"])))) == 4


def test_comparison_flags_lse_d_moves_over_5_percent_and_more_failures() -> None:
    def frame(lse: list[float], failed: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"setting": ["a", "b", "c"], "lse_d_mean": lse, "failed": failed})

    before = frame([8.0, 8.0, 8.0], [0, 1, 0])
    now = frame([8.3, 7.4, 8.0], [0, 1, 2])  # +3.75%, -7.5%, same
    out = compare_runs(now, before).set_index("setting")
    assert out.at["a", "flag"] == ""
    assert out.at["b", "flag"] == "LSE-D down 7.5%"
    assert out.at["c", "flag"] == "failures 0 -> 2"
    assert compare_runs(now, before.iloc[:2]).set_index("setting").at["c", "flag"] == "new"


def test_second_run_of_the_same_suite_is_compared_with_the_first(done, store: JobStore) -> None:
    res, _ = done
    again = suite_results(store, res.run["id"])
    assert again.previous_run_id is None and set(again.comparison["flag"]) == {""}
    later = run_suite(load_suite(Path(res.run["definition"]["pairs"][0]["video"]).parent / "tiny.yaml"),
                      store=store, grids=False)
    assert later.previous_run_id == res.run["id"]
    assert list(later.comparison["failed_before"]) == [0, 0]


def test_bootstrap_ci_and_proxy_ranking_rules() -> None:
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= low < 2.5 < high <= 4.0 and bootstrap_ci([1.0, 2.0, 3.0, 4.0]) == (low, high)
    assert bootstrap_ci([5.0]) == (5.0, 5.0)
    jobs = pd.DataFrame({"setting": ["baseline", "w", "p"], "model": ["baseline", "wav2lip", "passthrough"],
                         "status": "succeeded", "run_s": 1.0, "output_duration_s": 1.0,
                         "sync_proxy_conf": [9.0, 5.0, 1.0]})
    ranking = proxy_ranking(aggregate(jobs))
    assert ranking["setting"].tolist() == ["w", "p", "baseline"]
    assert ranking["rank"].tolist()[:2] == [1, 2] and pd.isna(ranking["rank"].iloc[2])


def test_cli_runs_a_suite_and_refuses_a_bad_one(clips: Path, tmp_path: Path) -> None:
    env = {"LIPSYNC_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    suite = write_suite(clips, ["noface", "clip2"], settings="[baseline]", name="cli")
    ok = subprocess.run([sys.executable, "-m", "jobs", "suite", "run", str(suite), "--no-grid"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "failed: noface x baseline: NoFaceFound" in ok.stdout and "[2/2] clip2 x baseline: succeeded" in ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\npairs:\n  - video: x.mp4\nsettings: [baseline]\n")
    refused = subprocess.run([sys.executable, "-m", "jobs", "suite", "run", str(bad)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "bad.yaml line 3, field pairs[0].audio" in refused.stderr
    assert "Traceback" not in refused.stderr
    nothing = subprocess.run([sys.executable, "-m", "jobs", "suite", "run"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2 and "give a suite file or folder" in nothing.stderr, nothing.stderr
