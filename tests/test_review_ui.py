"""The Review and Leaderboard tabs' handlers on a real SQLite history, as a public Space runs
them: a reviewer signed in with Hugging Face rates under that name and gets the next pair.
The Hugging Face sign-in cannot happen on this machine (no Hub), so the signed-in profile is
Gradio's own ``gr.OAuthProfile`` built from the fields the Hub's OAuth returns; the request
is Gradio's ``gr.Request`` of a browser session."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd
import pytest

from jobs.review import leaderboard
from jobs.settings import settings_from_env
from storage.jobs import JobStore
from test_ratings import make_run
from ui import review
from ui.context import AppContext


def _space(tmp_path: Path) -> AppContext:
    settings = settings_from_env({"SPACE_ID": "lipsync/test-space", "LIPSYNC_REVIEWERS": "alice",
                                  "LIPSYNC_DATA_DIR": str(tmp_path)})
    store = JobStore(tmp_path / "jobs.db", data_dir=tmp_path, recover=False, retention=False)
    make_run(store, tmp_path, clips=3, settings={"baseline": "baseline", "passthrough": "passthrough"})
    return AppContext(settings=settings, store=store)


def _profile(name: str) -> gr.OAuthProfile:
    return gr.OAuthProfile({"preferred_username": name, "name": name.title(), "profile": "", "picture": ""})


def test_a_signed_in_reviewer_rates_under_the_hub_name_and_gets_the_next_pair(tmp_path: Path) -> None:
    ctx = _space(tmp_path)
    browser = gr.Request(session_hash="s3ss10n")
    first = review.draw_pair(ctx, "", browser, _profile("alice"))
    shown = review.rate_pair(ctx, first[0], "A", "B", 4, 0, "", "someone else", browser, _profile("alice"))
    assert shown[0] and shown[0] != first[0], shown  # the next pair, not "nothing left"
    assert shown[-1].startswith("Rated. ") and "more pair(s)" in shown[-1], shown[-1]
    with ctx.store.connection() as db:
        assert db.execute("SELECT reviewer, sync, quality FROM ratings").fetchall() == [("alice", "a", "b")]
    with pytest.raises(gr.Error, match="for reviewers"):  # a visitor, or a Hub user who is not a reviewer
        review.draw_pair(ctx, "alice", browser, None)
    with pytest.raises(gr.Error, match="for reviewers"):
        review.draw_pair(ctx, "", browser, _profile("mallory"))


def test_the_last_rating_says_nothing_is_left(tmp_path: Path) -> None:
    ctx = _space(tmp_path)
    browser, alice = gr.Request(session_hash="s3ss10n"), _profile("alice")
    shown = review.draw_pair(ctx, "", browser, alice)
    for _ in range(3):  # 3 clips x one pair of settings
        assert shown[0]
        shown = review.rate_pair(ctx, shown[0], "A", "A", 0, 0, "", "", browser, alice)
    assert shown[0] == "" and shown[-1] == "Rated. Nothing left to rate for now."


def test_leaderboard_exports_keep_only_the_newest_folders(tmp_path: Path) -> None:
    ctx = _space(tmp_path)
    board = leaderboard(ctx.store)
    folders = [Path(review.export_leaderboard(board)[0]).parent for _ in range(review.KEEP_EXPORTS + 3)]
    assert [f.is_dir() for f in folders] == [False] * 3 + [True] * review.KEEP_EXPORTS
    newest = folders[-1]
    assert sorted(p.name for p in newest.iterdir())[:2] == ["leaderboard.json", "leaderboard_agreement.csv"]
    assert list(pd.read_csv(newest / "leaderboard_sync.csv")["setting"]) == list(board.sync["setting"])


def test_suite_results_are_for_reviewers_and_an_ended_run_is_built_once(tmp_path: Path) -> None:
    from storage import suites as runs
    from ui.suites import RunResultsCache

    ctx = _space(tmp_path)
    ended = runs.list_runs(ctx.store)[0]["id"]
    running = runs.create_run(ctx.store, suite="live", definition={"settings": []}, total_jobs=1, source="app")
    cache, browser, alice = RunResultsCache(ctx), gr.Request(session_hash="s3ss10n"), _profile("alice")
    first = cache.get(ended, browser, alice)
    assert first.run["id"] == ended and list(first.summary["setting"]) == ["baseline", "passthrough"]
    assert cache.get(f" {ended} ", browser, alice) is first  # the plot's metric or clip changed: no rebuild
    assert cache.get(running, browser, alice) is not cache.get(running, browser, alice)  # still changing
    for who in (None, _profile("mallory")):
        with pytest.raises(gr.Error, match="for reviewers"):
            cache.get(ended, browser, who)
