"""The baseline judged as a reviewer would, by an independent measure on its OUTPUT video:
dlib's own detector and 68-point predictor (not the pipeline's tracker) give the inner-lip
opening per frame, which must correlate with the driving speech's energy (best lag within
+-3 frames) at least 0.35, and stay shut during silent stretches; the top 40% of every
frame must be what the passthrough generator writes (PSNR > 42 dB). Outputs come from the
real run loop (pipeline.run.run) on synthetic media (encoded losslessly, crf 0) and, where
present, on real media (default settings)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest

import media

from pipeline.media import audio as audio_mod
from pipeline.faces.backends import dlib_predictor_path
from pipeline.options import RunOptions
from pipeline.media.probe import probe
from pipeline.run import run
from pipeline.media.decode import read_frames

log = logging.getLogger(__name__)

MIN_CORR = 0.35  # the bar; the original hdtf clip with its own speech scores ~0.30
MAX_LAG = 3  # frames either way
DETECT_SIDE = 256  # px: the measure detects on frames scaled to this long side (upsampled if need be)
ENERGY_RANGE_DB = 50.0  # speech energy floor: the loudest frame minus this
SILENT_DB = 40.0  # a frame quieter than the loudest by this much is silent
SILENT_RUN = 8  # frames: a silent stretch is at least this long ...
SETTLE = 4  # ... and is judged from its SETTLE-th frame on (the mouth's release time)
CLOSED = 0.06  # inner-lip gap / mouth width of a shut mouth (dlib's jitter on a closed one ~0.02)
TOP_PSNR_DB = 42.0


def lip_openings(video: Path) -> np.ndarray:
    """Inner-lip gap / mouth width per frame (NaN where dlib finds no face)."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_predictor_path()))
    out: list[float] = []
    for frame in read_frames(video):
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        s = DETECT_SIDE / max(gray.shape)
        small = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        found = detector(small, 0) or detector(small, 1)
        if not found:
            out.append(np.nan)
            continue
        r = max(found, key=lambda r: r.area())
        rect = dlib.rectangle(int(r.left() / s), int(r.top() / s), int(r.right() / s), int(r.bottom() / s))
        p = np.array([(q.x, q.y) for q in predictor(gray, rect).parts()], np.float64)  # (68, 2)
        gap = np.mean(p[[67, 66, 65], 1] - p[[61, 62, 63], 1])
        out.append(max(gap, 0.0) / np.linalg.norm(p[54] - p[48]))
    return np.array(out)


def speech_energy(audio: Path, fps: float, n: int) -> np.ndarray:
    """RMS dB of the driving audio under each frame, floored 50 dB under its loudest frame."""
    levels = media.frame_levels(audio_mod.load_audio(audio), fps, n)
    return np.maximum(levels, levels.max() - ENERGY_RANGE_DB)


def best_lag_corr(openings: np.ndarray, energy: np.ndarray) -> tuple[float, int]:
    best = (-1.0, 0)
    for lag in range(-MAX_LAG, MAX_LAG + 1):  # positive lag: the mouth follows the sound
        a = openings[max(0, lag):len(openings) + min(0, lag)]
        b = energy[max(0, -lag):len(energy) + min(0, -lag)]
        ok = ~np.isnan(a)
        c = float(np.corrcoef(a[ok], b[ok])[0, 1])
        best = max(best, (c, lag))
    return best


def settled_silence(energy: np.ndarray) -> np.ndarray:
    """Indices of frames well inside silent stretches of the audio."""
    silent = energy < energy.max() - SILENT_DB
    idx: list[int] = []
    start = None
    for i, s in enumerate(list(silent) + [False]):
        if s and start is None:
            start = i
        elif not s and start is not None:
            if i - start >= SILENT_RUN:
                idx.extend(range(start + SETTLE, i))
            start = None
    return np.array(idx, int)


def _judge(video: Path, audio: Path) -> dict[str, float]:
    openings = lip_openings(video)
    fps = probe(video).video.fps
    energy = speech_energy(audio, fps, len(openings))
    corr, lag = best_lag_corr(openings, energy)
    quiet = settled_silence(energy)
    voiced = energy > energy.max() - 20
    facts = {"corr": corr, "lag": lag, "missing": int(np.isnan(openings).sum()), "frames": len(openings),
             "silent_frames": len(quiet),
             "silent_max": float(np.nanmax(openings[quiet])) if len(quiet) else float("nan"),
             "voiced_mean": float(np.nanmean(openings[voiced]))}
    log.info("%s: %s", video.name, facts)
    return facts


def _psnr_top(a: np.ndarray, b: np.ndarray) -> float:
    rows = int(0.4 * a.shape[0])
    mse = np.mean((a[:rows].astype(np.float64) - b[:rows].astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory: pytest.TempPathFactory, face_mp4: Path, speech_wav: Path):
    out = tmp_path_factory.mktemp("baseline_quality")
    base = run(face_mp4, speech_wav, out / "baseline.mp4", options=RunOptions(model="baseline", crf=0))
    ref = run(face_mp4, speech_wav, out / "passthrough.mp4", options=RunOptions(model="passthrough", crf=0))
    return base, ref


@pytest.fixture(scope="module")
def synthetic_facts(synthetic_runs, speech_wav: Path) -> tuple[dict[str, float], dict[str, float]]:
    base, ref = synthetic_runs
    return _judge(Path(base.output_path), speech_wav), _judge(Path(ref.output_path), speech_wav)


def test_synthetic_baseline_follows_the_speech(synthetic_runs, synthetic_facts) -> None:
    base, _ = synthetic_runs
    assert base.model_used == "baseline" and base.frames_without_face == 0
    facts, ref_facts = synthetic_facts
    assert facts["missing"] <= 0.05 * facts["frames"]
    assert facts["corr"] >= MIN_CORR, facts
    assert ref_facts["corr"] < MIN_CORR, ref_facts  # the measure is not fooled by the still photo


def test_synthetic_baseline_keeps_the_mouth_shut_in_silence(synthetic_facts) -> None:
    facts, ref_facts = synthetic_facts
    assert facts["silent_frames"] >= 10, facts  # the fixture's speech has two 0.5 s pauses
    assert facts["silent_max"] < CLOSED, facts
    assert facts["voiced_mean"] > 3 * CLOSED, facts
    # the source photo smiles with parted lips: shut in silence means the baseline closed them
    assert ref_facts["silent_max"] > facts["silent_max"]


def test_baseline_leaves_the_top_of_the_frame_alone(synthetic_runs) -> None:
    """Compared losslessly (crf 0), so that what is measured is the generator and not
    x264: at crf 18 the two encodes' rate control drifts apart over each GOP and holds
    the top-40% PSNR between them near 40-41 dB although no pixel there differs."""
    base, ref = synthetic_runs
    n = 0
    worst = float("inf")
    for a, b in zip(read_frames(base.output_path), read_frames(ref.output_path)):
        worst = min(worst, _psnr_top(a, b))
        n += 1
    assert n == base.frames
    assert worst > TOP_PSNR_DB, worst
    assert worst == float("inf")  # bit-identical: the baseline draws nothing up there


def test_real_baseline_follows_its_own_speech(shared_media: Path, tmp_path: Path) -> None:
    video = shared_media / "hdtf_aoc_512.mp4"
    result = run(video, video, tmp_path / "hdtf_baseline.mp4", options=RunOptions(model="baseline"))
    assert result.model_used == "baseline" and result.frames_without_face == 0
    facts = _judge(Path(result.output_path), video)
    assert facts["missing"] == 0
    assert facts["corr"] >= MIN_CORR, facts
    if facts["silent_frames"]:
        assert facts["silent_max"] < 2 * CLOSED, facts


def test_the_baseline_is_reproducible(shared_media: Path, tmp_path: Path) -> None:
    """The same inputs and options give the same output file: a review compares settings, not
    run-to-run noise. (dlib used to read strided crop views past their rows, so on monalisa
    three runs gave three different files; tests/test_faces.py pins that cause down.)"""
    video = shared_media / "monalisa_720p.mp4"
    outputs = []
    for k in range(2):
        result = run(video, video, tmp_path / f"monalisa_{k}.mp4", options=RunOptions(model="baseline"))
        outputs.append(Path(result.output_path).read_bytes())
    assert outputs[0] == outputs[1]
