"""The sync proxy's confidence and the baseline caution where scores are shown: the score
conventions (eval), the scores table and job summary (ui), and the report trends (storage)."""

from __future__ import annotations

import pandas as pd

from eval.results import Score, Scores
from eval.sync_proxy import proxy_caution, with_caution
from storage import reports
from ui import present


def _scores() -> Scores:
    conv = {"kind": "proxy (not LSE)"}
    return Scores((Score("psnr_full", 30.0, None, {}), Score("sync_proxy_corr", 0.6, None, conv),
                   Score("sync_proxy_offset", None, "n/a (low confidence: 2.10 < 4.00; the peak would be +1 frames)",
                         conv), Score("sync_proxy_conf", 2.1, None, conv)))


def test_baseline_scores_carry_the_caution_and_others_do_not() -> None:
    marked = with_caution(_scores(), "baseline")
    for metric in ("sync_proxy_corr", "sync_proxy_offset", "sync_proxy_conf"):
        assert "same speech energy" in marked.get(metric).convention["caution"]
    assert "caution" not in marked.get("psnr_full").convention
    assert all("caution" not in s.convention for s in with_caution(_scores(), "wav2lip").scores)
    assert proxy_caution("wav2lip") is None and proxy_caution(None) is None


def test_scores_table_shows_confidence_offset_reason_and_caution() -> None:
    rows = with_caution(_scores(), "baseline").rows()
    table = present.scores_table(rows).set_index("metric")
    assert table.loc["sync_proxy_conf", "value"] == "2.1000"
    assert table.loc["sync_proxy_offset", "value"].startswith("n/a (low confidence: 2.10 < 4.00")
    assert "CAUTION" in table.loc["sync_proxy_corr", "meaning"] and "not LSE" in table.loc["sync_proxy_corr", "meaning"]
    assert "CAUTION" not in present.scores_table(_scores().rows()).set_index("metric").loc["sync_proxy_corr", "meaning"]
    summary = present.outcome_markdown(job_id="j", model_used="baseline", model_reason="asked", frames=10,
                                       frames_without_face=0, total_s=1.0)
    assert "Sync proxy caution" in summary
    assert "caution" not in present.outcome_markdown(job_id="j", model_used="wav2lip", model_reason="asked",
                                                     frames=10, frames_without_face=0, total_s=1.0).lower()


def test_proxy_trends_carry_confidence_and_caution() -> None:
    at = pd.Timestamp("2026-01-01T00:00:00Z")
    rows = []
    for k, (model, corr, conf) in enumerate([("baseline", 0.7, 6.0), ("wav2lip", 0.4, 5.0), ("wav2lip", 0.5, 3.0)]):
        for metric, value in (("sync_proxy_corr", corr), ("sync_proxy_conf", conf)):
            rows.append({"job_id": f"j{k}", "metric": metric, "value": value, "reason": None,
                         "model": model, "status": "succeeded", "created_at": at + pd.Timedelta(minutes=k)})
    trends = reports.score_trends(pd.DataFrame(rows), metric="sync_proxy_corr", window=5).set_index("model")
    assert trends.loc["baseline", "caution"] and not trends.loc["wav2lip", "caution"]
    assert trends.loc["wav2lip", "conf_mean"] == 4.0
    assert "caution" not in reports.score_trends(pd.DataFrame(rows), metric="lse_d", window=5)
