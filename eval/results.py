"""Score results: one value (or the reason there is none) per metric, with its convention.

A :class:`Score` carries everything needed to recompute and compare it later: the pinned
arguments of the metric (crop, colour space, window, fps, frame sampling) in
``convention``; :class:`Scores` adds the versions of the libraries that computed them.
``Scores.rows()`` is exactly what ``storage.JobStore.finish(scores=)``
take. A non-finite value (PSNR of identical frames is +inf) becomes a null value with a
reason in ``rows()`` and ``to_dict()``, so JSON and SQLite never see a bare infinity.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import platform
from dataclasses import dataclass, field
from typing import Any

LSE_METRICS = ("lse_d", "lse_c", "av_offset")
QUALITY_METRICS = ("psnr_full", "ssim_full", "psnr_face", "ssim_face")
PROXY_METRICS = ("sync_proxy_corr", "sync_proxy_offset", "sync_proxy_conf")
METRICS = LSE_METRICS + QUALITY_METRICS + PROXY_METRICS

# distributions whose versions change a score (looked up, never imported, by versions())
VERSIONED = ("numpy", "scipy", "scikit-image", "opencv-python-headless", "opencv-python", "torch",
             "python_speech_features", "dlib-bin", "dlib", "insightface")


@dataclass(frozen=True)
class Score:
    """One metric: a value, or None with the reason it could not be computed."""

    metric: str
    value: float | None
    reason: str | None = None
    convention: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.value is None and not self.reason:
            raise ValueError(f"score {self.metric!r} has no value and no reason")

    def row(self) -> dict[str, Any]:
        """``{metric, value, reason, convention}``; a non-finite value becomes None + reason."""
        value, reason = self.value, self.reason
        if value is not None and not math.isfinite(value):
            value, reason = None, reason or _non_finite_reason(self.metric, value)
        return {"metric": self.metric, "value": value, "reason": reason, "convention": dict(self.convention)}


def _non_finite_reason(metric: str, value: float) -> str:
    if metric.startswith("psnr") and value > 0:
        return "inf: the compared frames are identical (PSNR is infinite)"
    return f"not a finite number ({value})"


def nulls(metrics: tuple[str, ...], reason: str, convention: dict[str, Any] | None = None) -> list[Score]:
    """One null Score per metric, all with the same reason."""
    return [Score(m, None, reason, dict(convention or {})) for m in metrics]


@dataclass(frozen=True)
class Scores:
    """Every metric of one (original, generated) pair, and the library versions used."""

    scores: tuple[Score, ...]
    versions: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # alignment, frame counts, timings

    def get(self, metric: str) -> Score:
        for s in self.scores:
            if s.metric == metric:
                return s
        raise KeyError(f"no score {metric!r}; have {', '.join(s.metric for s in self.scores)}")

    def value(self, metric: str) -> float | None:
        return self.get(metric).value

    def rows(self) -> list[dict[str, Any]]:
        """What storage ``JobStore.finish(scores=)`` takes: metric, value, reason, convention."""
        return [s.row() for s in self.scores]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"scores": {metric: {value, reason, convention}}, "versions", "facts"}``."""
        out = {}
        for s in self.scores:
            row = s.row()
            out[s.metric] = {"value": row["value"], "reason": row["reason"], "convention": row["convention"]}
        return {"scores": out, "versions": dict(self.versions), "facts": dict(self.facts)}


def unavailable(reason: str) -> Scores:
    """Scores with every metric null for the same reason (scoring could not run at all)."""
    return Scores(tuple(nulls(METRICS, reason)), versions())


def versions() -> dict[str, str]:
    """Python and the installed versions of the libraries that compute scores."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    """Looked up once per process (installed versions do not change under a running server)."""
    found = [("python", platform.python_version())]
    for dist in VERSIONED:
        try:
            found.append((dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(found)
