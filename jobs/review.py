"""Blind A/B review: drawing pairs for a reviewer, checking and recording ratings, and the
leaderboard built from them.

A pair is two succeeded results of the same clip in the same suite run under two different
settings. Draws are balanced: the pair of settings compared least often so far comes first,
then the clip compared least often, ties broken at random; left and right are random. A
reviewer is never issued the same two results twice, and an issued pair not yet rated is
shown again before a new one. A pair id is opaque: a random token and its HMAC-SHA256 under
the database's own key (``storage.ratings.pair_key``), so a made-up or altered id is refused
before any lookup. Setting names never leave this module towards a reviewer.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import re
import secrets
from dataclasses import dataclass
from typing import Any

import pandas as pd

from eval import ratings as maths
from storage import ratings as store_ratings
from storage.jobs import JobStore
from storage.ratings import PairTaken, ReviewError

log = logging.getLogger(__name__)

TOKEN_BYTES = 16
SIG_HEX = 32  # hex digits of the HMAC kept in a pair id (128 bits)
PAIR_ID_RE = re.compile(r"[A-Za-z0-9_-]{22}\.[0-9a-f]{32}", re.ASCII)
ANSWER_WORDS = {"a": "a", "b": "b", "tie": "tie", "same": "tie"}
NOTE_MAX = 2000
REVIEWER_RE = re.compile(r"[\w.@+-][\w .@+-]{0,63}", re.UNICODE)
ANONYMOUS = "anonymous"
AGREEMENT_METRICS = ("lse_d", "sync_proxy_conf", "sync_proxy_corr")
DRAW_TRIES = 3


class ForgedPair(ReviewError):
    """A pair id that this server did not sign (made up or altered)."""


class ReviewerRequired(ReviewError):
    """Login is on and the request has no signed-in user."""


class NoPairsLeft(ReviewError):
    """Nothing left to rate for this reviewer."""


@dataclass(frozen=True)
class ReviewPair:
    """What a reviewer is shown: an opaque id and two videos (A left, B right); no names."""

    pair_id: str
    video_a: str
    video_b: str
    remaining: int  # further pairs this reviewer could still be shown

    def payload(self) -> dict[str, Any]:
        return {"pair_id": self.pair_id, "remaining": self.remaining}


def reviewer_name(*, login_on: bool, username: str | None, given: str | None = None) -> str:
    """The reviewer a rating is kept under: the signed-in user where login is on (refused
    without one), else the name given (or "anonymous")."""
    if login_on:
        if not username:
            raise ReviewerRequired("log in to review: ratings are kept under your user name")
        return username
    name = (given or "").strip() or ANONYMOUS
    if not REVIEWER_RE.fullmatch(name):
        raise ValueError("a reviewer name is 1-64 letters, digits, spaces or .@+-")
    return name


def _signature(key: bytes, token: str) -> str:
    return hmac.new(key, token.encode("ascii"), hashlib.sha256).hexdigest()[:SIG_HEX]


def sign(key: bytes, token: str) -> str:
    return f"{token}.{_signature(key, token)}"


def verify(key: bytes, pair_id: Any) -> str:
    """The token of a pair id this server signed; :class:`ForgedPair` otherwise."""
    if not isinstance(pair_id, str) or not PAIR_ID_RE.fullmatch(pair_id.strip()):
        raise ForgedPair("not a review pair id: ask /review_next for one")
    token, _, sig = pair_id.strip().partition(".")
    if not hmac.compare_digest(sig, _signature(key, token)):
        raise ForgedPair("this pair id was not issued by this server")
    return token


def _options(store: JobStore, reviewer: str, suite: str | None) -> list[dict[str, Any]]:
    """Every comparison the reviewer has not been issued, with how often its settings and its
    two results were issued to anyone so far."""
    cands = store_ratings.candidates(store, suite=suite)
    cands = cands[[os.path.isfile(p) for p in cands["output_path"]]] if len(cands) else cands
    seen = store_ratings.issued_to(store, reviewer)
    counts = store_ratings.comparison_counts(store)
    setting_of = dict(zip(cands["job_id"], cands["setting"]))
    by_jobs = {(lo, hi): n for lo, hi, n in counts.itertuples(index=False)}
    by_settings: dict[tuple[str, str], int] = {}
    for (lo, hi), n in by_jobs.items():
        if lo in setting_of and hi in setting_of:
            key = tuple(sorted((setting_of[lo], setting_of[hi])))
            by_settings[key] = by_settings.get(key, 0) + n
    out = []
    for (run_id, pair), group in cands.groupby(["run_id", "pair"], sort=False):
        for x, y in itertools.combinations(group.itertuples(index=False), 2):
            lo, hi = sorted((x.job_id, y.job_id))
            if x.setting == y.setting or (lo, hi) in seen:
                continue
            out.append({"run_id": run_id, "pair": pair, "jobs": (x, y),
                        "settings_count": by_settings.get(tuple(sorted((x.setting, y.setting))), 0),
                        "jobs_count": by_jobs.get((lo, hi), 0)})
    return out


def _shown(key: bytes, row: dict[str, Any], remaining: int) -> ReviewPair:
    return ReviewPair(pair_id=sign(key, row["id"]), video_a=row["path_a"], video_b=row["path_b"],
                      remaining=remaining)


def next_pair(store: JobStore, reviewer: str, *, suite: str | None = None,
              rng: random.Random | None = None) -> ReviewPair:
    """The reviewer's next pair: an issued, unrated one first, else a new balanced draw."""
    rng = rng or random.SystemRandom()
    key = store_ratings.pair_key(store)
    for _ in range(DRAW_TRIES):
        options = _options(store, reviewer, suite)
        pending = store_ratings.pending_pair(store, reviewer)
        if pending is not None:
            return _shown(key, pending, len(options))
        if not options:
            raise NoPairsLeft("nothing left for you to rate: every pair of results has been shown "
                              "to you; run a suite (Suites tab) to make more")
        least = min((o["settings_count"], o["jobs_count"]) for o in options)
        choice = rng.choice([o for o in options if (o["settings_count"], o["jobs_count"]) == least])
        a, b = choice["jobs"]
        if rng.random() < 0.5:
            a, b = b, a
        try:
            row = store_ratings.issue_pair(store, token=secrets.token_urlsafe(TOKEN_BYTES), reviewer=reviewer,
                                           run_id=choice["run_id"], pair=choice["pair"], job_a=a.job_id,
                                           job_b=b.job_id)
        except PairTaken:
            continue  # the same reviewer drew the same two at once elsewhere: draw again
        return ReviewPair(pair_id=sign(key, row["id"]), video_a=a.output_path, video_b=b.output_path,
                          remaining=len(options) - 1)
    raise NoPairsLeft("could not draw a pair: try again")


def _answer(value: Any, what: str) -> str:
    word = ANSWER_WORDS.get(str(value or "").strip().lower())
    if word is None:
        raise ValueError(f"{what} must be A, B or tie, got {str(value)[:20]!r}")
    return word


def _opinion(value: Any, side: str) -> int | None:
    if value is None or value == "" or value == 0:
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"opinion of {side} must be 1-5 or empty, got {str(value)[:20]!r}") from None
    if score != int(score) or not 1 <= score <= 5:
        raise ValueError(f"opinion of {side} must be a whole number 1-5, got {value!r}")
    return int(score)


def submit_rating(store: JobStore, pair_id: Any, reviewer: str, *, sync: Any, quality: Any,
                  opinion_a: Any = None, opinion_b: Any = None, note: str | None = None) -> int:
    """Record one rating; refused (ForgedPair, UnknownPair, AlreadyRated, ValueError) with
    nothing written. Returns the rating id."""
    answers = {"sync": _answer(sync, "the lip-sync answer"), "quality": _answer(quality, "the quality answer"),
               "opinion_a": _opinion(opinion_a, "A"), "opinion_b": _opinion(opinion_b, "B"),
               "note": (note or "").strip()[:NOTE_MAX] or None}
    token = verify(store_ratings.pair_key(store), pair_id)
    return store_ratings.submit(store, token=token, reviewer=reviewer, answers=answers)


@dataclass(frozen=True)
class Leaderboard:
    """Per setting win rates and Bradley-Terry strengths (lip sync and quality), mean opinion
    scores, ratings per reviewer, and people-vs-metric agreement."""

    sync: pd.DataFrame
    quality: pd.DataFrame
    opinions: pd.DataFrame
    reviewers: pd.DataFrame
    agreement: pd.DataFrame
    ratings: int

    def to_dict(self) -> dict[str, Any]:
        def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(frame.to_json(orient="records"))

        return {"ratings": self.ratings, "sync": rows(self.sync), "quality": rows(self.quality),
                "opinions": rows(self.opinions), "reviewers": rows(self.reviewers),
                "agreement": rows(self.agreement)}


def _opinions(frame: pd.DataFrame) -> pd.DataFrame:
    sides = [frame[[f"setting_{s}", f"opinion_{s}"]].set_axis(["setting", "opinion"], axis=1) for s in ("a", "b")]
    both = pd.concat(sides).dropna(subset=["opinion"])
    if not len(both):
        return pd.DataFrame(columns=["setting", "opinions", "mean_opinion"])
    out = both.groupby("setting")["opinion"].agg(["count", "mean"]).reset_index()
    return out.set_axis(["setting", "opinions", "mean_opinion"], axis=1)


def leaderboard(store: JobStore, *, suite: str | None = None) -> Leaderboard:
    """The leaderboard over every rating (of one suite when given)."""
    frame = store_ratings.ratings_frame(store, metrics=AGREEMENT_METRICS, suite=suite)
    return Leaderboard(sync=maths.leaderboard(frame, "sync"), quality=maths.leaderboard(frame, "quality"),
                       opinions=_opinions(frame), reviewers=maths.reviewer_counts(frame),
                       agreement=maths.agreements(frame, AGREEMENT_METRICS), ratings=len(frame))
