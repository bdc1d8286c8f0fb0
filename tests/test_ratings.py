"""Blind ratings: pair drawing, refusals, concurrency and the leaderboard maths, on a real
SQLite file through the real stores. The suite jobs here are recorded through JobStore
with small placeholder result files (the drawing only needs their records; generation is
tested in test_suites.py)."""

from __future__ import annotations

import multiprocessing
import random
import secrets
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval.ratings import agreement, leaderboard as leaderboard_maths, wilson_ci
from jobs.review import (ForgedPair, NoPairsLeft, ReviewerRequired, leaderboard, next_pair, reviewer_name, sign,
                         submit_rating)
from storage import suites as runs
from storage.jobs import JobStore
from storage.ratings import AlreadyRated, UnknownPair, pair_key

SETTINGS = {"baseline": "baseline", "passthrough": "passthrough", "crushed": "baseline"}


def _store(folder: Path) -> JobStore:
    return JobStore(folder / "jobs.db", data_dir=folder, recover=False, retention=False)


def make_run(store: JobStore, folder: Path, *, clips: int, settings: dict[str, str],
             lse: dict[str, float] | None = None) -> str:
    """A finished suite run of ``clips`` x ``settings`` recorded as succeeded jobs."""
    run_id = runs.create_run(store, suite="synthetic", definition={"settings": [{"name": s} for s in settings]},
                             total_jobs=clips * len(settings), source="cli")
    for c in range(clips):
        for k, (setting, model) in enumerate(settings.items()):
            out = folder / f"r{c}_{k}.mp4"
            out.write_bytes(b"placeholder")
            job = store.create(source="cli", inputs={"video": str(out)}, model_requested=model)
            runs.add_job(store, run_id, job, pair=f"clip{c}", setting=setting, model=model,
                         position=c * len(settings) + k)
            store.start(job)
            scores = [{"metric": "lse_d", "value": lse[setting] + 0.01 * c}] if lse else None
            store.finish(job, model_used=model, outputs={"video": str(out)}, scores=scores)
    runs.finish_run(store, run_id, summary={})
    return run_id


def _ratings(store: JobStore) -> list[tuple]:
    with store.connection() as db:
        return db.execute("SELECT pair_id, reviewer, sync FROM ratings ORDER BY id").fetchall()


def test_eighty_percent_preference_for_baseline_gives_the_right_order_with_cis(tmp_path: Path) -> None:
    rng = random.Random(3)
    with _store(tmp_path) as store:
        make_run(store, tmp_path, clips=10, settings={"baseline": "baseline", "passthrough": "passthrough"})
        setting_of = dict(store_rows(store))
        for r in range(20):
            reviewer = f"rev{r}"
            for _ in range(10):
                pair = next_pair(store, reviewer, rng=rng)
                a_setting = setting_of[Path(pair.video_a).name]
                prefers_baseline = rng.random() < 0.8
                answer = "A" if (a_setting == "baseline") == prefers_baseline else "B"
                submit_rating(store, pair.pair_id, reviewer, sync=answer, quality=answer)
            with pytest.raises(NoPairsLeft):
                next_pair(store, reviewer)
        board = leaderboard(store)
    assert board.ratings == 200
    sync = board.sync.set_index("setting")
    assert list(board.sync["setting"]) == ["baseline", "passthrough"]
    assert sync.at["baseline", "win_ci_low"] > 0.5 and sync.at["passthrough", "win_ci_high"] < 0.5
    assert 0.7 < sync.at["baseline", "win_rate"] < 0.9
    assert sync.at["baseline", "bt_ci_low"] > sync.at["passthrough", "bt_ci_high"]
    # odds of exp(strength difference) match the observed wins / losses
    odds = sync.at["baseline", "wins"] / sync.at["baseline", "losses"]
    assert np.exp(sync.at["baseline", "bt_strength"] - sync.at["passthrough", "bt_strength"]) == pytest.approx(odds, rel=0.05)
    assert board.reviewers["ratings"].tolist() == [10] * 20


def store_rows(store: JobStore) -> list[tuple[str, str]]:
    """(result file name, setting) of every suite job."""
    with store.connection() as db:
        rows = db.execute("SELECT j.output_path, s.setting FROM suite_jobs s JOIN jobs j ON j.id = s.job_id").fetchall()
    return [(Path(p).name, s) for p, s in rows]


def test_pairs_are_balanced_random_sided_and_never_repeated(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        make_run(store, tmp_path, clips=4, settings=SETTINGS)
        setting_of = dict(store_rows(store))
        seen, combos, left = set(), [], Counter()
        for _ in range(12):  # 4 clips x 3 setting pairs
            pair = next_pair(store, "ann", rng=random.Random(len(seen)))
            a, b = Path(pair.video_a).name, Path(pair.video_b).name
            assert a.split("_")[0] == b.split("_")[0] and setting_of[a] != setting_of[b]  # same clip
            assert frozenset((a, b)) not in seen
            seen.add(frozenset((a, b)))
            combos.append(frozenset((setting_of[a], setting_of[b])))
            left[setting_of[a]] += 1
            assert next_pair(store, "ann").pair_id == pair.pair_id  # unrated: shown again
            submit_rating(store, pair.pair_id, "ann", sync="tie", quality="a")
        with pytest.raises(NoPairsLeft):
            next_pair(store, "ann")
        for start in range(0, 12, 3):  # every 3 draws cover the 3 setting pairs once
            assert len(set(combos[start:start + 3])) == 3
        assert sum(left.values()) == 12 and len(left) >= 2  # both sides get every setting
        assert next_pair(store, "bob").pair_id != pair.pair_id  # another reviewer starts afresh


def test_submit_refuses_unknown_forged_rated_or_foreign_pairs_and_changes_nothing(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        make_run(store, tmp_path, clips=2, settings=SETTINGS)
        pair = next_pair(store, "ann")
        token, sig = pair.pair_id.split(".")
        forged = f"{token}.{'0' * len(sig)}"
        unknown = sign(pair_key(store), secrets.token_urlsafe(16))  # signed, never issued
        for bad, error in ((forged, ForgedPair), ("not-a-pair", ForgedPair), ("", ForgedPair), (None, ForgedPair),
                           (unknown, UnknownPair)):
            with pytest.raises(error):
                submit_rating(store, bad, "ann", sync="A", quality="B")
        with pytest.raises(UnknownPair):  # issued to ann, not to eve
            submit_rating(store, pair.pair_id, "eve", sync="A", quality="B")
        with pytest.raises(ValueError, match="A, B or tie"):
            submit_rating(store, pair.pair_id, "ann", sync="left", quality="B")
        with pytest.raises(ValueError, match="1-5"):
            submit_rating(store, pair.pair_id, "ann", sync="A", quality="B", opinion_a=7)
        assert _ratings(store) == []
        submit_rating(store, pair.pair_id, "ann", sync="A", quality="tie", opinion_a=4, note="fine")
        with pytest.raises(AlreadyRated):
            submit_rating(store, pair.pair_id, "ann", sync="B", quality="B")
        assert _ratings(store) == [(token, "ann", "a")]


def test_a_rating_needs_a_signed_in_reviewer_where_login_is_on() -> None:
    with pytest.raises(ReviewerRequired):
        reviewer_name(login_on=True, username=None, given="someone")
    assert reviewer_name(login_on=True, username="ann", given="bob") == "ann"
    assert reviewer_name(login_on=False, username=None, given="  bob ") == "bob"
    assert reviewer_name(login_on=False, username=None, given="") == "anonymous"
    with pytest.raises(ValueError):
        reviewer_name(login_on=False, username=None, given="<script>")


def _rate_all(args: tuple[str, str, int]) -> int:
    """A reviewer process: its own connection; rates until nothing is left."""
    folder, reviewer, seed = args
    rng = random.Random(seed)
    done = 0
    with _store(Path(folder)) as store:
        while True:
            try:
                pair = next_pair(store, reviewer, rng=rng)
            except NoPairsLeft:
                return done
            submit_rating(store, pair.pair_id, reviewer, sync=rng.choice("ab"), quality="tie")
            done += 1


def _race(args: tuple[str, str, str]) -> str:
    folder, pair_id, reviewer = args
    with _store(Path(folder)) as store:
        try:
            submit_rating(store, pair_id, reviewer, sync="a", quality="b")
            return "ok"
        except AlreadyRated:
            return "refused"


def test_reviewers_rating_at_once_never_lose_or_duplicate(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        make_run(store, tmp_path, clips=5, settings=SETTINGS)
        racing = [next_pair(store, f"racer{i}") for i in range(3)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        counts = pool.map(_rate_all, [(str(tmp_path), f"rev{i}", i) for i in range(4)])
        # the same pair submitted by four processes at once: exactly one rating each
        races = pool.map(_race, [(str(tmp_path), p.pair_id, f"racer{i}") for i, p in enumerate(racing)
                                 for _ in range(4)])
    assert counts == [15, 15, 15, 15]  # 5 clips x 3 setting pairs, each reviewer
    assert Counter(races) == {"ok": 3, "refused": 9}
    with _store(tmp_path) as store:
        rows = _ratings(store)
        assert len(rows) == 63 and len({r[0] for r in rows}) == 63
        per = Counter(r[1] for r in rows)
        assert all(per[f"rev{i}"] == 15 for i in range(4))
        with store.connection() as db:
            issued = db.execute("SELECT reviewer, job_lo, job_hi FROM review_pairs").fetchall()
        assert len(issued) == len(set(issued))


def test_agreement_between_people_and_metrics() -> None:
    frame = pd.DataFrame({
        "reviewer": "r", "setting_a": ["x", "x", "y", "y", "x"], "setting_b": ["y", "y", "x", "x", "z"],
        "model_a": ["wav2lip", "wav2lip", "passthrough", "passthrough", "baseline"],
        "model_b": ["passthrough", "passthrough", "wav2lip", "wav2lip", "wav2lip"],
        "sync": ["a", "a", "b", "a", "b"], "quality": "tie",
        "lse_d_a": [6.0, 6.0, 8.0, 8.0, 7.0], "lse_d_b": [8.0, 8.0, 6.0, 6.0, 6.5],
        "sync_proxy_conf_a": [5.0, 5.0, 1.0, 1.0, 9.0], "sync_proxy_conf_b": [1.0, 1.0, 5.0, 5.0, 2.0]})
    lse = agreement(frame, "lse_d")
    assert (lse["n"], lse["agree"]) == (5, 4) and lse["rate"] == pytest.approx(0.8)
    proxy = agreement(frame, "sync_proxy_conf")
    assert (proxy["n"], proxy["agree"], proxy["excluded"]) == (4, 3, 1) and "baseline" in proxy["note"]
    low, high = wilson_ci(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    board = leaderboard_maths(frame, "sync", n_boot=50)
    assert board["setting"].tolist() == ["z", "x", "y"]  # z is unbeaten (1 of 1), x won 3 of 5, y 1 of 4
    assert board.set_index("setting")["wins"].to_dict() == {"z": 1, "x": 3, "y": 1}
