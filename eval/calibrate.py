"""CLI: ``python -m eval calibrate-proxy [--media DIR] [--write]``: the sync proxy's calibration.

Over the real clips of the shared media folder (``../shared/media`` or $LIPSYNC_TEST_MEDIA),
each scored as ``python -m eval score V V --audio A`` scores it (``eval.score.score_videos``,
whose mouth measures are kept through ``on_mouths``), the proxy is read against:

- the clip's own audio, and copies of it shifted in memory by +-2, +-5 and +-10 frames
  (exact: the waveform moves by round(frames * 16000 / fps) samples; + = the audio leads);
- unrelated speech (windows of the other recordings, as long as the clip): the null.

From these it sets the two numbers the proxy reads from ``eval/proxy_calibration.json``:

- ``lead_s``: the median over the own-audio rows of (raw offset - shift) / fps: how far the
  mouth moves before the sound on in-sync speech (a property of speech, not a bias to fix);
- ``threshold``: the larger of the highest confidence any unrelated speech reached and the
  Bonferroni z of a family-wise p of FAMILY_P over the 31 lags, rounded up to 0.1.

It prints the table (markdown); ``--write`` also rewrites the JSON and docs/PROXY_CALIBRATION.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.stats import norm

from eval import sync_proxy as sp
from eval.proxy_features import MouthFrames
from pipeline.media.audio import SAMPLE_RATE, load_audio

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PROXY_CALIBRATION.md"
SHIFTS = (0, 2, -2, 5, -5, 10, -10)  # frames; + = the audio leads
UNRELATED = ("speech_en_60s.wav", "radio_stereo_8s.wav", "speech_48k_24bit.wav", "speech_44k.mp3")
WINDOWS_PER_RECORDING = 3  # non-overlapping windows of a recording long enough for several
FAMILY_P = 0.001  # family-wise false-alarm rate over the lags behind the threshold's floor
SYNC_TOLERANCE = 2  # frames: an own-audio, unshifted reading is right within this
SHIFT_TOLERANCE = 1  # frames: a shifted reading is right within this of the shift


@dataclass(frozen=True)
class Clip:
    """A real clip and the audio it is scored against; ``in_sync``: that audio is its own."""

    video: str
    audio: str | None  # None: the video's own track
    in_sync: bool
    note: str


CLIPS = (
    Clip("hdtf_aoc_512.mp4", None, True, "HDTF interview, own audio"),
    Clip("monalisa_720p.mp4", None, True, "animated portrait, own audio (29.97 fps)"),
    Clip("sun_portrait_noaudio.mp4", "sun.wav", False,
         "MuseTalk portrait + its driving speech (sync unknown: not used for the lead)"),
)


@dataclass(frozen=True)
class Row:
    """One reading: a clip against one audio (own shifted by ``shift``, or unrelated: None)."""

    clip: str
    audio: str
    kind: str  # "own" | "unrelated" | "paired"
    shift: int | None
    fps: float
    raw_offset: float
    confidence: float
    corr: float
    offset: int | None = None  # filled in once the lead and threshold are known

    def correct(self) -> bool | None:
        """Whether the reading meets the issue's bar (None: no known answer)."""
        if self.kind == "paired":
            return None
        if self.kind == "unrelated":
            return self.offset is None
        if self.offset is None:
            return True  # the bar: an offset within tolerance, or n/a with low confidence
        tolerance = SYNC_TOLERANCE if self.shift == 0 else SHIFT_TOLERANCE
        return abs(self.offset - self.shift) <= tolerance


@dataclass(frozen=True)
class Derivation:
    lead_s: float
    threshold: float
    null_max: float
    bonferroni_z: float
    own_min: float


def shift_audio(wav: np.ndarray, frames: float, fps: float) -> np.ndarray:
    """``wav`` made to lead the video by ``frames`` (negative: to lag), same length, zero-padded."""
    s = int(round(frames * SAMPLE_RATE / fps))
    pad = np.zeros(abs(s), np.float32)
    if s == 0:
        return np.asarray(wav, np.float32)
    return np.concatenate([wav[s:], pad]) if s > 0 else np.concatenate([pad, wav[:len(wav) + s]])


def clip_mouths(video: Path, audio: Path, *, speech: np.ndarray | None = None) -> MouthFrames:
    """The mouth measures ``python -m eval score VIDEO VIDEO --audio AUDIO`` reads (``speech``:
    ``audio`` already decoded by ``load_audio``, not decoded again)."""
    from eval.score import score_videos

    got: list[MouthFrames] = []
    score_videos(video, video, audio=audio, speech=speech, on_mouths=got.append)
    if not got:
        raise ValueError(f"{video.name}: scoring found no mouth to calibrate on")
    return got[0]


def _windows(wav: np.ndarray, seconds: float) -> list[np.ndarray]:
    n = int(seconds * SAMPLE_RATE)
    if len(wav) < n // 2:
        return []
    starts = range(0, max(1, len(wav) - n + 1), max(n, 1))
    return [wav[s:s + n] for s in list(starts)[:WINDOWS_PER_RECORDING]]


def read_rows(media: Path, clips: Sequence[Clip] = CLIPS) -> list[Row]:
    """Every reading, with no lead and no threshold applied (raw offsets)."""
    raw = sp.Calibration(threshold=math.inf, lead_s=0.0, source="uncalibrated")
    unrelated = {name: load_audio(media / name) for name in UNRELATED if (media / name).exists()}
    rows = []
    for clip in clips:
        video = media / clip.video
        audio = media / (clip.audio or clip.video)
        wav = load_audio(audio)
        mouths = clip_mouths(video, audio, speech=wav)
        feats, fps = mouths.features(), mouths.fps

        def read(w: np.ndarray, label: str, kind: str, shift: int | None) -> Row:
            r = sp.sync_proxy(feats, w, fps, calib=raw)
            return Row(clip.video, label, kind, shift, fps, r.raw_offset, r.confidence, r.corr)

        if clip.in_sync:
            rows += [read(shift_audio(wav, s, fps), f"own {s:+d}", "own", s) for s in SHIFTS]
        else:
            rows.append(read(wav, clip.audio or "own", "paired", None))
        for name, other in unrelated.items():
            for k, w in enumerate(_windows(other, len(feats) / fps)):
                rows.append(read(w, f"{name} #{k + 1}", "unrelated", None))
        log.info("calibrated on %s", clip.video)
    return rows


def derive(rows: Sequence[Row]) -> Derivation:
    """The lead and the threshold from the raw readings (see the module doc)."""
    own = [r for r in rows if r.kind == "own"]
    null = [r.confidence for r in rows if r.kind == "unrelated"]
    if not own or not null:
        raise ValueError("calibration needs own-audio and unrelated readings")
    lead_s = statistics.median((r.raw_offset - r.shift) / r.fps for r in own)
    bonferroni = float(norm.isf(FAMILY_P / (2 * sp.MAX_LAG + 1)))
    threshold = math.ceil(max(bonferroni, max(null)) * 10) / 10
    return Derivation(round(lead_s, 4), threshold, max(null), bonferroni, min(r.confidence for r in own))


def apply(rows: Sequence[Row], d: Derivation) -> list[Row]:
    """The rows as the calibrated proxy reports them (offset None below the threshold)."""
    return [replace(r, offset=int(round(r.raw_offset - d.lead_s * r.fps)) if r.confidence >= d.threshold else None)
            for r in rows]


def table(rows: Sequence[Row]) -> str:
    lines = ["| clip | audio | expected | offset read | confidence | held-out corr | correct? |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        expected = {"own": f"{r.shift:+d}" if r.shift is not None else "", "unrelated": "n/a",
                    "paired": "unknown"}[r.kind]
        read = "n/a (low confidence)" if r.offset is None else f"{r.offset:+d}"
        ok = {True: "yes", False: "NO", None: "-"}[r.correct()]
        lines.append(f"| {r.clip} | {r.audio} | {expected} | {read} | {r.confidence:.2f} | {r.corr:.2f} | {ok} |")
    return "\n".join(lines)


def summary(rows: Sequence[Row], d: Derivation) -> str:
    own = [r for r in rows if r.kind == "own"]
    null = [r for r in rows if r.kind == "unrelated"]
    confident = [r for r in own if r.offset is not None]
    return (f"- lead: {d.lead_s * 1000:+.0f} ms (median over the {len(own)} own-audio readings of "
            f"(raw offset - shift) / fps; negative: the mouth moves before the sound)\n"
            f"- threshold: {d.threshold:.1f} = max(highest unrelated-speech confidence {d.null_max:.2f}, "
            f"Bonferroni z {d.bonferroni_z:.2f} for p = {FAMILY_P:g} over {2 * sp.MAX_LAG + 1} lags), "
            f"rounded up to 0.1; lowest own-audio confidence {d.own_min:.2f}\n"
            f"- own audio: {len(confident)}/{len(own)} confident, "
            f"{sum(bool(r.correct()) for r in confident)}/{len(confident)} of those correct; "
            f"unrelated speech: {sum(r.offset is None for r in null)}/{len(null)} read n/a")


def write(rows: Sequence[Row], d: Derivation, doc: Path = DOC) -> None:
    """Rewrite eval/proxy_calibration.json and the calibration page from this run."""
    today = datetime.date.today().isoformat()
    data = {"threshold": d.threshold, "lead_s": d.lead_s, "date": today,
            "derivation": {"null_max": round(d.null_max, 4), "bonferroni_z": round(d.bonferroni_z, 4),
                           "family_p": FAMILY_P, "own_min": round(d.own_min, 4),
                           "clips": [c.video for c in CLIPS], "shifts": list(SHIFTS),
                           "unrelated": list(UNRELATED)}}
    sp.CALIBRATION_FILE.write_text(json.dumps(data, indent=2) + "\n")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(_page(rows, d, today))


def _page(rows: Sequence[Row], d: Derivation, today: str) -> str:
    method = (__doc__ or "").split("\n\n", 1)[1]
    return (f"# Sync proxy calibration\n\nRecomputed {today} with `python -m eval calibrate-proxy --write` "
            f"(this page and `eval/proxy_calibration.json` are its output; do not edit by hand).\n\n"
            f"The proxy (`eval/sync_proxy.py`) is a weights-free stand-in for SyncNet, not LSE. "
            f"Its offset is reported only when its confidence (a permutation z of the peak lag's "
            f"held-out correlation) reaches the threshold below; otherwise the score reads "
            f"`n/a (low confidence: ...)` with the figure.\n\n## Method\n\n{method}\n"
            f"## Result\n\n{summary(rows, d)}\n\n{table(rows)}\n\n## Limits\n\n"
            f"Two in-sync clips (8 s and 14 s) and one clip of unknown sync are all the real media "
            f"there is; the shifted copies are the same two performances, so the lead and the "
            f"threshold rest on two speakers. The mouth and speech measures were chosen on this same "
            f"data (eval/proxy_features.py). Recompute when clips are added.\n")


def media_dir(given: str | None) -> Path:
    """The shared media folder: ``given``, else $LIPSYNC_TEST_MEDIA, else ../shared/media."""
    return Path(given or os.environ.get("LIPSYNC_TEST_MEDIA") or ROOT.parent / "shared" / "media")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-proxy", help="recompute the sync proxy's threshold and lead")
    p.add_argument("--media", help="real media folder (default: $LIPSYNC_TEST_MEDIA or ../shared/media)")
    p.add_argument("--write", action="store_true",
                   help="rewrite eval/proxy_calibration.json and docs/PROXY_CALIBRATION.md")


def run(args: argparse.Namespace) -> int:
    """Prints the calibration (exit 0); exit 2 when the media folder lacks the clips."""
    media = media_dir(args.media)
    missing = [c.video for c in CLIPS if not (media / c.video).exists()]
    if missing:
        log.error("calibration media missing in %s: %s", media, ", ".join(missing))
        return 2
    rows = read_rows(media)
    d = derive(rows)
    rows = apply(rows, d)
    print_out = f"{summary(rows, d)}\n\n{table(rows)}\n"
    if args.write:
        write(rows, d)
        print_out += f"\nwrote {sp.CALIBRATION_FILE.relative_to(ROOT)} and {DOC.relative_to(ROOT)}\n"
    sys.stdout.write(print_out)
    return 0
