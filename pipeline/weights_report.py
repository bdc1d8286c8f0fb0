"""The report behind ``python -m pipeline weights``, the System tab and ``/readyz``: for each
model the project knows, where its weights were found (the search step and sha256; for the
LatentSync VAE, where its config comes from) or why not and the fix."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.errors import WeightsInvalid, WeightsUnavailable
from pipeline.weights import LATENTSYNC_LAYOUT, LATENTSYNC_VAE, SPECS, WeightsSpec, fix_for, hub_offline, search


def config_source(spec: WeightsSpec, weights: str) -> str | None:
    """Where the loader takes the model's config from, for a model whose config is a file of
    its own (the LatentSync VAE: the config.json beside the weights, else the built-in one)."""
    if spec.name != LATENTSYNC_VAE.name:
        return None
    from pipeline.generators.latentsync.vae_config import vae_files

    return vae_files(weights).config_source


def _spec_row(spec: WeightsSpec, *, allow_download: bool) -> dict[str, Any]:
    spec = spec.configured()
    row: dict[str, Any] = {"name": spec.name, "label": spec.label, "found": False, "where": None,
                           "source": None, "sha256": None, "config": None, "why_not": None, "fix": None}
    try:
        hit, tried = search(spec, allow_download=allow_download)
    except (WeightsUnavailable, WeightsInvalid) as exc:
        row.update(why_not=str(exc), fix=fix_for(spec))
        return row
    if hit is not None:
        row.update(found=True, where=hit.path, source=hit.source, sha256=hit.sha256,
                   config=config_source(spec, hit.path))
        return row
    if not allow_download and not hub_offline():
        tried[-1] = f"Hub download: would be tried on first use from {spec.repo_id}/{spec.repo_filename}"
    row.update(why_not="; ".join(tried), fix=fix_for(spec))
    return row


TRACKER_FIXES = {  # what makes each face-tracker backend available
    "insightface": ("unzip an InsightFace pack (e.g. buffalo_l.zip from the insightface releases) into "
                    "~/.insightface/models/buffalo_l/, or set LIPSYNC_INSIGHTFACE_ROOT to the folder "
                    "holding models/buffalo_l/; without it the dlib tracker is used"),
    "dlib": "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0 (both in requirements.txt)",
}
TRACKER_LABELS = {"insightface": "InsightFace model pack", "dlib": "dlib 68-point predictor"}


def _tracker_rows() -> list[dict[str, Any]]:
    """InsightFace pack and dlib predictor, from ``pipeline.faces.tracker_status()``."""
    from pipeline.faces.backends import tracker_status

    rows = []
    for name, info in tracker_status().items():
        found = bool(info.get("available"))
        rows.append({
            "name": name, "label": TRACKER_LABELS.get(name, name), "found": found,
            "where": info.get("path") if found else None, "source": "package" if name == "dlib" else "disk",
            "sha256": None, "config": None, "why_not": None if found else info.get("reason"),
            "fix": None if found else TRACKER_FIXES.get(name),
        })
    return rows


def weights_report(*, allow_download: bool = False) -> list[dict[str, Any]]:
    """One row per model the project knows: name, label, found, where, source (the search step
    that found it: :data:`pipeline.weights.SEARCH_ORDER`), sha256, config, why_not, fix."""
    return [_spec_row(s, allow_download=allow_download) for s in SPECS] + _tracker_rows()


def latentsync_summary(rows: list[dict[str, Any]]) -> str:
    """One phrase on the LatentSync files among :func:`weights_report` ``rows``: all found, or
    which are missing."""
    mine = [r for r in rows if r["name"] in LATENTSYNC_LAYOUT]
    missing = [r["label"] for r in mine if not r["found"]]
    if not missing:
        return "weights found"
    return f"weights missing: {', '.join(missing)}"


def format_report(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["label"] or "") for r in rows) + 2
    lines = [f"{'model':<{width}}found  where / why not"]
    for r in rows:
        if r["found"]:
            detail = f"{r['where']}" + (f" ({r['source']})" if r["source"] else "")
        else:
            detail = r["why_not"] or "not found"
        lines.append(f"{r['label']:<{width}}{'yes' if r['found'] else 'no':<7}{detail}")
        if r["found"] and r["sha256"]:
            lines.append(f"{'':<{width + 7}}sha256 {r['sha256']}")
        if r["found"] and r.get("config"):
            lines.append(f"{'':<{width + 7}}config {r['config']}")
        if not r["found"] and r["fix"]:
            lines.append(f"{'':<{width + 7}}fix: {r['fix']}")
    return "\n".join(lines) + "\n"


def main_weights(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline weights [--json] [--download]``: 0, or 1 when --download failed."""
    parser = argparse.ArgumentParser(prog="python -m pipeline weights",
                                     description="where each model's weights were found, or why not")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    parser.add_argument("--download", action="store_true",
                        help="download missing Hub weights now (unless HF_HUB_OFFLINE=1)")
    args = parser.parse_args(argv)
    rows = weights_report(allow_download=args.download)
    sys.stdout.write(json.dumps(rows, indent=2) + "\n" if args.json else format_report(rows))
    known = {s.name for s in SPECS}
    return 1 if args.download and any(not r["found"] for r in rows if r["name"] in known) else 0
