"""The Review tab (blind A/B rating), the Leaderboard tab, and /review_next, /review_submit
and /leaderboard.

Nothing the Review tab or /review_next sends names a setting: the two videos (the jobs'
result files), an opaque signed pair id and a count of pairs left. Where login is on the
reviewer is the signed-in user and a request without one is refused; without login the
reviewer types a name (or rates as "anonymous").
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any

import gradio as gr

from jobs.review import Leaderboard, NoPairsLeft, leaderboard, next_pair, reviewer_name, submit_rating
from ui.context import READ_GROUP, AppContext
from ui.errors import user_errors
from ui.privacy import reviewers_only

log = logging.getLogger(__name__)

RATING_GROUP = "review"  # ratings are quick SQLite writes: their own lane, never behind generation
ANSWERS = ["A", "B", "tie"]
KEYS_HELP = ("Keys: **1 / 2 / 3** lip sync A / B / tie · **Q / W / E** visual quality A / B / tie · "
             "**Enter** submit · **N** next pair")
# keydown -> the radio or button it presses; typing in a text field is left alone
KEYS_JS = """
if (!window.__lipsyncReviewKeys) {
  window.__lipsyncReviewKeys = true;
  const radio = (id, i) => { const r = document.querySelectorAll('#' + id + ' input[type=radio]');
                             if (r[i]) r[i].click(); };
  const keys = {'1': () => radio('review-sync', 0), '2': () => radio('review-sync', 1),
                '3': () => radio('review-sync', 2), 'q': () => radio('review-quality', 0),
                'w': () => radio('review-quality', 1), 'e': () => radio('review-quality', 2),
                'enter': () => document.querySelector('#review-submit').click(),
                'n': () => document.querySelector('#review-next').click()};
  document.addEventListener('keydown', (ev) => {
    const t = ev.target, tag = (t && t.tagName || '').toLowerCase();
    if (tag === 'textarea' || (tag === 'input' && t.type !== 'radio') || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const panel = document.querySelector('#review-submit');
    const act = keys[ev.key.toLowerCase()];
    if (!act || !panel || panel.offsetParent === null) return;
    ev.preventDefault();
    act();
  });
}
"""


def _reviewer(ctx: AppContext, request: gr.Request | None, given: str | None,
              profile: gr.OAuthProfile | None = None) -> str:
    """Who rates: the login user, else the Hugging Face user signed in (a Space's reviewers),
    else the name typed (or "anonymous"); refused for a visitor of a public Space."""
    reviewers_only(ctx, request, profile, "Blind review pairs")
    hf_user = getattr(profile, "username", None) if profile is not None else None
    return reviewer_name(login_on=ctx.settings.auth is not None or hf_user is not None,
                         username=getattr(request, "username", None) or hf_user, given=given)


def _pair_view(pair: Any) -> tuple[Any, ...]:
    """The Review tab's outputs for a jobs.review pair (answers and opinions cleared)."""
    return (pair.pair_id, pair.video_a, pair.video_b, None, None, 0, 0, "",
            f"{pair.remaining} more pair(s) after this one")


def draw_pair(ctx: AppContext, given: str | None, request: gr.Request | None,
              profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
    """The Review tab's next pair for the request's reviewer."""
    with user_errors("review"):
        return _pair_view(next_pair(ctx.store, _reviewer(ctx, request, given, profile)))


def rate_pair(ctx: AppContext, pid: str, sync: str | None, quality: str | None, op_a: float, op_b: float,
              text: str, given: str | None, request: gr.Request | None,
              profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
    """Keep the rating under the request's reviewer, then show that reviewer's next pair."""
    with user_errors("review"):
        reviewer = _reviewer(ctx, request, given, profile)
        submit_rating(ctx.store, pid, reviewer, sync=sync, quality=quality, opinion_a=op_a, opinion_b=op_b,
                      note=text)
        try:
            shown = _pair_view(next_pair(ctx.store, reviewer))
        except NoPairsLeft:
            shown = ("", None, None, None, None, 0, 0, "", "Nothing left to rate for now.")
    return shown[:-1] + (f"Rated. {shown[-1]}",)


def _tables(board: Leaderboard) -> tuple[Any, ...]:
    shown = [getattr(board, name).round(3) for name in ("sync", "quality", "opinions", "reviewers", "agreement")]
    return (f"{board.ratings} ratings", *shown)


_EXPORTS: deque[Path] = deque()  # this process's export folders, newest last
_EXPORTS_LOCK = threading.Lock()
KEEP_EXPORTS = 4  # folders kept: Gradio copies a returned file to its cache once the call returns


def export_leaderboard(board: Leaderboard) -> list[str]:
    """The leaderboard's CSV and JSON files in a new temporary folder; the oldest folders of
    earlier exports are removed, so a long-running server does not fill its temp disk."""
    folder = Path(tempfile.mkdtemp(prefix="lipsync-leaderboard-"))
    with _EXPORTS_LOCK:
        _EXPORTS.append(folder)
        while len(_EXPORTS) > KEEP_EXPORTS:
            shutil.rmtree(_EXPORTS.popleft(), ignore_errors=True)
    paths = []
    for name in ("sync", "quality", "opinions", "reviewers", "agreement"):
        path = folder / f"leaderboard_{name}.csv"
        getattr(board, name).to_csv(path, index=False)
        paths.append(str(path))
    (folder / "leaderboard.json").write_text(json.dumps(board.to_dict(), indent=2))
    return [*paths, str(folder / "leaderboard.json")]


def build_review_tab(ctx: AppContext) -> None:
    """The Review tab's components (inside a gr.Tab)."""
    gr.HTML("<div id='review-keys-help'></div>", js_on_load=KEYS_JS, elem_id="review-keys")
    gr.Markdown("Two results of the same clip, made with two different settings, in random order. "
                "Which one has better lip sync, and which looks better? " + KEYS_HELP)
    with gr.Row():
        who = gr.Textbox(label="Reviewer name", visible=ctx.settings.auth is None, elem_id="review-reviewer")
        next_btn = gr.Button("Next pair", elem_id="review-next")
    with gr.Row():
        video_a = gr.Video(label="A", interactive=False, autoplay=True, loop=True, elem_id="review-a")
        video_b = gr.Video(label="B", interactive=False, autoplay=True, loop=True, elem_id="review-b")
    with gr.Row():
        sync = gr.Radio(ANSWERS, label="Better lip sync", elem_id="review-sync")
        quality = gr.Radio(ANSWERS, label="Better visual quality", elem_id="review-quality")
    with gr.Row():
        opinion_a = gr.Slider(0, 5, value=0, step=1, label="Opinion of A (1-5, 0 = none)", elem_id="review-op-a")
        opinion_b = gr.Slider(0, 5, value=0, step=1, label="Opinion of B (1-5, 0 = none)", elem_id="review-op-b")
    note = gr.Textbox(label="Note (optional)", elem_id="review-note")
    submit_btn = gr.Button("Submit rating", variant="primary", elem_id="review-submit")
    status = gr.Markdown(elem_id="review-status")
    pair_id = gr.Textbox(visible=False)

    def draw(given: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
        return draw_pair(ctx, given, request, profile)

    def rate(pid: str, s: str | None, q: str | None, op_a: float, op_b: float, text: str, given: str | None,
             request: gr.Request, profile: gr.OAuthProfile | None = None) -> tuple[Any, ...]:
        return rate_pair(ctx, pid, s, q, op_a, op_b, text, given, request, profile)

    pair_outputs = [pair_id, video_a, video_b, sync, quality, opinion_a, opinion_b, note, status]
    lane = {"concurrency_id": RATING_GROUP, "concurrency_limit": None, "api_visibility": "private"}
    next_btn.click(draw, inputs=[who], outputs=pair_outputs, **lane)
    submit_btn.click(rate, inputs=[pair_id, sync, quality, opinion_a, opinion_b, note, who],
                     outputs=pair_outputs, **lane)


def build_leaderboard_tab(ctx: AppContext, tab: gr.Tab) -> None:
    """The Leaderboard tab (inside ``tab``): computed when the tab is opened and on Refresh
    (2 x 200 Bradley-Terry fits: not after every rating)."""
    gr.Markdown("Win rate: (wins + ties / 2) / comparisons, with a 95% Wilson interval. Strength: the "
                "Bradley-Terry log-strength (choix), with a 95% bootstrap interval; a difference d means odds "
                "exp(d) of being preferred. Agreement: how often the side a metric prefers (lower LSE-D, "
                "higher proxy) is the side reviewers preferred; the baseline is left out of the proxy's "
                "agreement (it drives the mouth with the speech energy the proxy reads).")
    refresh = gr.Button("Refresh", elem_id="leaderboard-refresh")
    count = gr.Markdown(elem_id="leaderboard-count")
    sync = gr.Dataframe(label="Lip sync", interactive=False, wrap=True, elem_id="leaderboard-sync")
    quality = gr.Dataframe(label="Visual quality", interactive=False, wrap=True, elem_id="leaderboard-quality")
    opinions = gr.Dataframe(label="Opinion scores (1-5)", interactive=False)
    reviewers = gr.Dataframe(label="Ratings per reviewer", interactive=False, elem_id="leaderboard-reviewers")
    agreement = gr.Dataframe(label="People vs metrics (lip sync)", interactive=False)
    exports = gr.File(label="Exports (CSV, JSON)", interactive=False)

    def load() -> tuple[Any, ...]:
        with user_errors("leaderboard"):
            board = leaderboard(ctx.store)
        return (*_tables(board), export_leaderboard(board))

    outputs = [count, sync, quality, opinions, reviewers, agreement, exports]
    read = {"concurrency_id": READ_GROUP, "concurrency_limit": None, "api_visibility": "private"}
    refresh.click(load, outputs=outputs, **read)
    tab.select(load, outputs=outputs, **read)


def build_review_api(ctx: AppContext) -> None:
    """/review_next, /review_submit and /leaderboard for gradio_client (hidden components)."""
    with gr.Column(visible=False):
        r_reviewer = gr.Textbox(label="reviewer (only without login)")
        r_pair = gr.JSON(label="pair")
        r_a = gr.Video(label="video A")
        r_b = gr.Video(label="video B")
        next_btn = gr.Button("review_next")
        s_pair = gr.Textbox(label="pair id")
        s_sync = gr.Textbox(label="sync: A, B or tie")
        s_quality = gr.Textbox(label="quality: A, B or tie")
        s_op_a = gr.Number(None, label="opinion of A (1-5 or empty)")
        s_op_b = gr.Number(None, label="opinion of B (1-5 or empty)")
        s_note = gr.Textbox(label="note")
        s_out = gr.JSON(label="result")
        submit_btn = gr.Button("review_submit")
        board_out = gr.JSON(label="leaderboard")
        board_btn = gr.Button("leaderboard")

    def review_next(given: str | None, request: gr.Request,
                    profile: gr.OAuthProfile | None = None) -> tuple[dict[str, Any], str, str]:
        """The next blind pair: ``{"pair_id", "remaining"}`` and the two videos (A, B)."""
        with user_errors("review"):
            pair = next_pair(ctx.store, _reviewer(ctx, request, given, profile))
        return pair.payload(), pair.video_a, pair.video_b

    def review_submit(pid: str, s: str, q: str, op_a: float | None, op_b: float | None, text: str,
                      given: str | None, request: gr.Request,
                      profile: gr.OAuthProfile | None = None) -> dict[str, Any]:
        """Rate a pair from /review_next: lip sync and quality as A, B or tie, optional 1-5
        opinions and a note. Refused for an unknown, forged or already-rated pair id."""
        with user_errors("review"):
            rating = submit_rating(ctx.store, pid, _reviewer(ctx, request, given, profile), sync=s, quality=q,
                                   opinion_a=op_a, opinion_b=op_b, note=text)
        return {"rating_id": rating}

    def board() -> dict[str, Any]:
        """Per setting win rates and Bradley-Terry strengths with CIs (lip sync, quality),
        opinions, ratings per reviewer and people-vs-metric agreement."""
        with user_errors("leaderboard"):
            return leaderboard(ctx.store).to_dict()

    lane = {"concurrency_id": RATING_GROUP, "concurrency_limit": None}
    next_btn.click(review_next, inputs=[r_reviewer], outputs=[r_pair, r_a, r_b], api_name="review_next", **lane)
    submit_btn.click(review_submit, inputs=[s_pair, s_sync, s_quality, s_op_a, s_op_b, s_note, r_reviewer],
                     outputs=[s_out], api_name="review_submit", **lane)
    board_btn.click(board, outputs=[board_out], api_name="leaderboard", concurrency_id=READ_GROUP,
                    concurrency_limit=None)

