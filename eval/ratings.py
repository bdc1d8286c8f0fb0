"""The maths of blind A/B ratings: win rates with Wilson CIs, Bradley-Terry strengths (choix's
I-LSR fit) with bootstrap CIs, ratings per reviewer, and how often people and metrics agree.

Input is one row per rating (``storage.ratings.ratings_frame``): ``reviewer``, ``setting_a``,
``setting_b`` (the settings shown left and right), ``model_a``, ``model_b``, the answers
``sync`` and ``quality`` (``"a"``, ``"b"`` or ``"tie"``) and, where scored, each side's metric
values as ``<metric>_a`` / ``<metric>_b``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import choix
import numpy as np
import pandas as pd

from eval.suite_stats import CI_LEVEL, LOWER_IS_BETTER, PROXY_NOTE
from pipeline.options import SPEECH_ENERGY_MODELS

ANSWERS = ("a", "b", "tie")
ASPECTS = ("sync", "quality")
BT_ALPHA = 0.01  # I-LSR regularisation: finite strengths even when one setting always wins
BT_BOOT = 200  # bootstrap resamples of the ratings behind a strength's CI
BT_SEED = 0
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_ci(successes: float, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (ties count half a success)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _settings(ratings: pd.DataFrame) -> list[str]:
    return sorted(set(ratings["setting_a"]) | set(ratings["setting_b"])) if len(ratings) else []


def win_rates(ratings: pd.DataFrame, aspect: str = "sync") -> pd.DataFrame:
    """Per setting: comparisons, wins, ties, losses, win rate ((wins + ties / 2) / n) and its
    95% Wilson CI."""
    rows = []
    for name in _settings(ratings):
        left = ratings["setting_a"] == name
        right = ratings["setting_b"] == name
        answer = ratings[aspect]
        wins = int(((left & (answer == "a")) | (right & (answer == "b"))).sum())
        ties = int(((left | right) & (answer == "tie")).sum())
        n = int((left | right).sum())
        rate = (wins + ties / 2) / n if n else math.nan
        low, high = wilson_ci(wins + ties / 2, n)
        rows.append({"setting": name, "comparisons": n, "wins": wins, "ties": ties,
                     "losses": n - wins - ties, "win_rate": rate, "win_ci_low": low, "win_ci_high": high})
    return pd.DataFrame(rows, columns=["setting", "comparisons", "wins", "ties", "losses", "win_rate",
                                       "win_ci_low", "win_ci_high"])


def _comparisons(ratings: pd.DataFrame, aspect: str, index: dict[str, int]) -> list[tuple[int, int]]:
    """(winner, loser) index pairs; a tie counts as one win each way."""
    data = []
    for a, b, answer in zip(ratings["setting_a"], ratings["setting_b"], ratings[aspect]):
        ia, ib = index[a], index[b]
        if answer == "a":
            data.append((ia, ib))
        elif answer == "b":
            data.append((ib, ia))
        else:
            data += [(ia, ib), (ib, ia)]
    return data


def _fit(n_items: int, data: list[tuple[int, int]]) -> np.ndarray:
    return choix.ilsr_pairwise(n_items, data, alpha=BT_ALPHA)  # (n_items,) log-strengths, mean 0


def bradley_terry(ratings: pd.DataFrame, aspect: str = "sync", *, n_boot: int = BT_BOOT,
                  seed: int = BT_SEED) -> pd.DataFrame:
    """Per setting: Bradley-Terry log-strength (mean 0 over the settings; a difference d means
    odds exp(d) of being preferred) and its 95% percentile bootstrap CI over the ratings."""
    names = _settings(ratings)
    columns = ["setting", "bt_strength", "bt_ci_low", "bt_ci_high"]
    if len(names) < 2:
        return pd.DataFrame([{"setting": n, "bt_strength": 0.0, "bt_ci_low": math.nan,
                              "bt_ci_high": math.nan} for n in names], columns=columns)
    index = {name: i for i, name in enumerate(names)}
    strength = _fit(len(names), _comparisons(ratings, aspect, index))
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, len(names)))  # (n_boot, n_settings)
    for k in range(n_boot):
        sample = ratings.iloc[rng.integers(0, len(ratings), len(ratings))]
        boots[k] = _fit(len(names), _comparisons(sample, aspect, index))
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = np.percentile(boots, [tail, 100 - tail], axis=0)  # (n_settings,) each
    return pd.DataFrame({"setting": names, "bt_strength": strength, "bt_ci_low": low, "bt_ci_high": high},
                        columns=columns)


def leaderboard(ratings: pd.DataFrame, aspect: str = "sync", **bt: int) -> pd.DataFrame:
    """Win rates and Bradley-Terry strengths per setting, strongest first."""
    table = win_rates(ratings, aspect).merge(bradley_terry(ratings, aspect, **bt), on="setting", how="left")
    return table.sort_values(["bt_strength", "win_rate"], ascending=False, kind="stable").reset_index(drop=True)


def reviewer_counts(ratings: pd.DataFrame) -> pd.DataFrame:
    """Ratings per reviewer, most first."""
    if not len(ratings):
        return pd.DataFrame(columns=["reviewer", "ratings"])
    counts = ratings.groupby("reviewer").size().rename("ratings").reset_index()
    return counts.sort_values(["ratings", "reviewer"], ascending=[False, True]).reset_index(drop=True)


def agreement(ratings: pd.DataFrame, metric: str, *, aspect: str = "sync") -> dict[str, object]:
    """How often the side the metric prefers (lower LSE-D, higher otherwise) is the side the
    reviewers preferred, over decisive ratings where both sides have different values.
    For a sync-proxy metric, ratings with a proxy-blind model (the baseline) on either side
    are left out and counted in ``excluded``."""
    a_col, b_col = f"{metric}_a", f"{metric}_b"
    out: dict[str, object] = {"metric": metric, "aspect": aspect, "n": 0, "agree": 0, "rate": math.nan,
                              "ci_low": math.nan, "ci_high": math.nan, "excluded": 0, "note": ""}
    if a_col not in ratings.columns or b_col not in ratings.columns or not len(ratings):
        return out
    rows = ratings[ratings[aspect].isin(("a", "b")) & ratings[a_col].notna() & ratings[b_col].notna()]
    rows = rows[rows[a_col] != rows[b_col]]
    if metric.startswith("sync_proxy"):
        blind = rows["model_a"].isin(SPEECH_ENERGY_MODELS) | rows["model_b"].isin(SPEECH_ENERGY_MODELS)
        out["excluded"], out["note"] = int(blind.sum()), PROXY_NOTE if blind.any() else ""
        rows = rows[~blind]
    a_better = rows[a_col] < rows[b_col] if metric in LOWER_IS_BETTER else rows[a_col] > rows[b_col]
    agree = int(((rows[aspect] == "a") == a_better).sum())
    low, high = wilson_ci(agree, len(rows))
    out.update({"n": int(len(rows)), "agree": agree, "rate": agree / len(rows) if len(rows) else math.nan,
                "ci_low": low, "ci_high": high})
    return out


def agreements(ratings: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """:func:`agreement` of each metric, as a table."""
    return pd.DataFrame([agreement(ratings, m) for m in metrics])
