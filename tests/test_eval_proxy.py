"""The weights-free sync proxy: on real media (own audio reads in sync, shifted copies read
their shift whenever the confidence is high, unrelated speech reads n/a), on a still photo
turned into video (n/a), and its pieces on synthetic series (held-out fit, confidence,
calibration maths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

import media
from eval import calibrate, lse
from eval import proxy_features as pf
from eval import sync_proxy as sp
from eval.score import score_videos
from pipeline.faces.types import Face
from pipeline.media.audio import SAMPLE_RATE, load_audio

FPS = 25.0
CLIPS = ("hdtf_aoc_512.mp4", "monalisa_720p.mp4")


@pytest.fixture(scope="module")
def real(shared_media: Path) -> dict[str, tuple[pf.MouthFrames, np.ndarray]]:
    """(mouth measures as ``python -m eval score V V`` reads them, own audio) per real clip."""
    return {name: (calibrate.clip_mouths(shared_media / name, shared_media / name),
                   load_audio(shared_media / name)) for name in CLIPS}


@pytest.mark.parametrize("name", CLIPS)
def test_own_audio_reads_in_sync_or_low_confidence(real: dict, name: str) -> None:
    mouths, wav = real[name]
    res = sp.sync_proxy(mouths.features(), wav, mouths.fps)
    assert res.offset is None or abs(res.offset) <= 2, (name, res.peak_offset, res.confidence)
    assert res.confident, f"{name}: own audio should be confident ({res.confidence:.2f})"


@pytest.mark.parametrize("name", CLIPS)
@pytest.mark.parametrize("shift", [5, -5])
def test_shifted_copies_read_their_shift_when_confident(real: dict, name: str, shift: int) -> None:
    mouths, wav = real[name]
    res = sp.sync_proxy(mouths.features(), calibrate.shift_audio(wav, shift, mouths.fps), mouths.fps)
    if res.confident:
        assert abs(res.offset - shift) <= 1, (name, shift, res.offset, res.confidence)
    else:
        assert res.offset is None and "low confidence" in res.low_confidence_reason()


def test_unrelated_speech_reads_low_confidence(real: dict, shared_media: Path) -> None:
    mouths, _ = real["hdtf_aoc_512.mp4"]
    other = load_audio(shared_media / "speech_en_60s.wav")[:8 * SAMPLE_RATE]
    res = sp.sync_proxy(mouths.features(), other, mouths.fps)
    assert res.offset is None and res.confidence < res.threshold


def test_score_videos_reports_offset_and_confidence(shared_media: Path, tmp_path: Path) -> None:
    """End to end: audio made to lead by 5 frames reads +5 +- 1 (or n/a), with the confidence
    as its own score and the threshold and lead in the convention."""
    video = shared_media / "hdtf_aoc_512.mp4"
    path = tmp_path / "lead5.wav"
    wavfile.write(path, SAMPLE_RATE, lse.to_int16(calibrate.shift_audio(load_audio(video), 5, FPS)))
    scores = score_videos(video, video, audio=path)
    conf, offset = scores.get("sync_proxy_conf"), scores.get("sync_proxy_offset")
    assert conf.value is not None and conf.convention["threshold"] == sp.calibration().threshold
    assert "lead_s" in offset.convention and "proxy (not LSE)" in offset.convention["kind"]
    if conf.value >= conf.convention["threshold"]:
        assert abs(offset.value - 5) <= 1
    else:
        assert offset.value is None and offset.reason.startswith("n/a (low confidence")


def test_still_photo_against_speech_reads_low_confidence(synth_dir: Path, speech_wav: Path) -> None:
    """A still photo turned into video (no mouth movement at all) against speech: n/a."""
    still = media.write_video(synth_dir / "proxy_still.mp4", [media.face_frame(0)] * 75, audio=speech_wav)
    scores = score_videos(still, still)
    offset, conf = scores.get("sync_proxy_offset"), scores.get("sync_proxy_conf")
    assert offset.value is None and offset.reason.startswith("n/a (low confidence"), offset.reason
    assert conf.value is not None and conf.value < conf.convention["threshold"]


def _planted(n: int, lead: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) mouth-like and (n, 4) audio-like series sharing a smooth source, the audio
    ``lead`` frames early (audio[i] follows source[i + lead])."""
    rng = np.random.default_rng(seed)
    src = np.convolve(rng.normal(size=n + 40), np.ones(3) / 3, "same")  # (n + 40,) ~syllable-rate
    v = src[20:20 + n, None] * rng.normal(size=3) + noise * rng.normal(size=(n, 3))  # (n, 3)
    a = src[20 + lead:20 + lead + n, None] * rng.normal(size=4) + noise * rng.normal(size=(n, 4))  # (n, 4)
    return v, a


def test_heldout_curve_finds_a_planted_lead_and_noise_does_not_fit() -> None:
    v, a = _planted(300, 4, 0.5)
    curve = sp.lag_curve(v, a)
    assert -(int(np.argmax(curve)) - sp.MAX_LAG) == 4 and curve.max() > 0.5
    z = sp.shift_null_z(*sp.heldout_projections(*sp._overlap(v, a, -4)))
    assert z > 6
    rng = np.random.default_rng(1)
    noise = sp.lag_curve(rng.normal(size=(300, 9)), rng.normal(size=(300, 7)))
    assert noise.max() < 0.25  # held out: nine against seven noise series do not fit each other


def test_stacked_cca_equals_one_svd_per_fold() -> None:
    """The held-out projections from the stacked eighs equal those of the textbook form (per
    fold: whiten each side, the SVD of the whitened cross-covariance) up to a common sign."""
    rng = np.random.default_rng(5)
    v = rng.normal(size=(200, 6))
    a = np.column_stack([v[:, 0] + rng.normal(size=200), rng.normal(size=(200, 4))])

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        w, e = np.linalg.eigh(c)
        return (e / np.sqrt(w)) @ e.T

    want_v, want_a = np.empty(200), np.empty(200)
    for block in np.array_split(np.arange(200), sp.FOLDS):
        train = np.ones(200, bool)
        train[max(0, block[0] - sp.GUARD):block[-1] + 1 + sp.GUARD] = False
        vt, at = v[train] - v[train].mean(axis=0), a[train] - a[train].mean(axis=0)
        kv = inv_sqrt(vt.T @ vt / len(vt) + sp.RIDGE * np.eye(6))
        ka = inv_sqrt(at.T @ at / len(at) + sp.RIDGE * np.eye(5))
        u, _, wt = np.linalg.svd(kv @ (vt.T @ at / len(vt)) @ ka)
        wv, wa = kv @ u[:, 0], ka @ wt[0]
        want_v[block] = (v[block] - v[train].mean(axis=0)) @ wv / (vt @ wv).std()
        want_a[block] = (a[block] - a[train].mean(axis=0)) @ wa / (at @ wa).std()
    pv, pa = sp.heldout_projections(v, a)
    for block in np.array_split(np.arange(200), sp.FOLDS):  # each fold's weights carry their own sign
        sign = np.sign(pv[block] @ want_v[block])
        np.testing.assert_allclose(pv[block] * sign, want_v[block], atol=1e-9)
        np.testing.assert_allclose(pa[block] * sign, want_a[block], atol=1e-9)


def test_canonical_signs_follow_the_mouth_opening() -> None:
    """Each fold's canonical pair is oriented by the first mouth measure, not by LAPACK: the
    audio side's sign flipped (or a measure's scale changed) leaves the mouth's projections as
    they were, so the confidence's circular shifts never mix blocks of random signs."""
    rng = np.random.default_rng(9)
    v = rng.normal(size=(240, 5))
    a = np.column_stack([v[:, 0] - v[:, 2] + rng.normal(size=240), rng.normal(size=(240, 3))])
    pv, pa = sp.heldout_projections(v, a)
    pv2, pa2 = sp.heldout_projections(v, -a)
    np.testing.assert_allclose(pv2, pv, atol=1e-9)
    np.testing.assert_allclose(pa2, pa, atol=1e-9)  # the same variate: its weights flipped with -a
    pv3, _ = sp.heldout_projections(v * [1, -1, 1, -1, 1], a)  # flipped measures other than the first
    np.testing.assert_allclose(pv3, pv, atol=1e-9)
    for block in np.array_split(np.arange(240), sp.FOLDS):
        assert np.corrcoef(pv[block], v[block, 0])[0, 1] > 0


def test_confidence_separates_related_from_unrelated() -> None:
    v, a = _planted(250, 0, 1.0)
    _, b = _planted(250, 0, 1.0, seed=7)  # another source
    conf = sp.shift_null_z(*sp.heldout_projections(v, a))
    unrelated = max(sp.shift_null_z(*sp.heldout_projections(*sp._overlap(v, b, lag)))
                    for lag in range(-sp.MAX_LAG, sp.MAX_LAG + 1))
    assert conf > 4 > unrelated, (conf, unrelated)


def test_calibration_maths() -> None:
    rows = [calibrate.Row("c", "own", "own", s, 25.0, s - 3.0 + 0.1 * k, 6.0, 0.5)
            for k, s in enumerate((0, 5, -5))]
    rows += [calibrate.Row("c", "x", "unrelated", None, 25.0, 7.0, z, 0.1) for z in (1.0, 4.4)]
    d = calibrate.derive(rows)
    assert d.lead_s == pytest.approx(-2.9 / 25.0)
    assert d.threshold == 4.4 and d.bonferroni_z == pytest.approx(4.0, abs=0.01)
    done = calibrate.apply(rows, d)
    assert [r.offset for r in done[:3]] == [0, 5, -5] and all(r.correct() for r in done[:4])
    assert done[3].offset is None and done[4].offset is not None and done[4].correct() is False


def test_shift_audio_moves_samples_exactly() -> None:
    wav = np.arange(SAMPLE_RATE, dtype=np.float32)
    lead = calibrate.shift_audio(wav, 2, FPS)  # 2 frames = 1280 samples early
    assert lead[0] == 1280 and len(lead) == len(wav) and lead[-1] == 0
    lag = calibrate.shift_audio(wav, -2, FPS)
    assert lag[1280] == 0 and lag[1279] == 0 and lag[1281] == 1


def test_features_and_envelope_shapes() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    wav = (np.sin(2 * np.pi * 1000 * t) * (t < 0.5)).astype(np.float32)  # 0.5 s tone, then silence
    env = pf.speech_envelope(wav, FPS, 30)
    assert env.shape == (30,)
    assert env[:10].min() > 0.5 and env[15:25].max() < 0.01 and env[-5:].max() == 0.0  # past the end
    assert pf.audio_features(wav, FPS, 30).shape == (30, len(pf.AUDIO_NAMES))
    assert np.isnan(sp.mouth_openings([None, None])).all()
    assert pf.mouth_features([None] * 5).shape == (5, len(pf.MOUTH_NAMES))
    with pytest.raises(ValueError, match="too short"):
        sp.sync_proxy(np.zeros(10), wav, FPS)


def _mouth_face(scale: float) -> Face:
    """A 68-point face whose inner lips are a hexagon 40 px wide and 10 px open (area 300),
    nose bottom 80 px above the chin, in a 160 px high box, all times ``scale``."""
    p = np.zeros((68, 2), np.float32)
    p[[60, 61, 62, 63, 64]] = [(0, 0), (10, -5), (20, -5), (30, -5), (40, 0)]  # upper inner
    p[[67, 66, 65]] = [(10, 5), (20, 5), (30, 5)]  # lower inner
    p[[48, 59, 58, 57, 56, 55, 54]] = [(-5, 0), (5, 12), (12, 12), (20, 12), (28, 12), (35, 12), (45, 0)]
    p[8], p[33] = (20, 60), (20, -20)  # chin, nose bottom
    return Face((-20 * scale, -60 * scale, 60 * scale, 100 * scale), p * scale, 1.0)


def test_mouth_measures_of_known_shapes() -> None:
    """open, area, jaw and lower_lip of drawn mouths, whatever their size; a frame without a
    face is interpolated; a 106-point layout (mouth_points) is measured beside the 68-point one."""
    closed = Face((0.0, 0.0, 100.0, 100.0), None, 1.0, np.array([(30, 70), (50, 72), (70, 70)], np.float32))
    feats = pf.mouth_features([_mouth_face(1.0), None, _mouth_face(2.5), closed])
    want = [10 / 40, 300 / 40 ** 2, 80 / 160, (60 / 7) / 40]
    np.testing.assert_allclose(feats[0, :4], want, rtol=1e-6)
    np.testing.assert_allclose(feats[2, :4], want, rtol=1e-6)
    np.testing.assert_allclose(feats[1, :4], want, rtol=1e-6)  # interpolated between its neighbours
    assert feats[3, 0] == 0.0 and feats[3, 1] == 0.0  # a closed mouth from mouth_points


def test_appearance_scores_are_the_principal_components() -> None:
    """The patches' scores on their top principal axes (from the Gram matrix) equal an SVD's
    up to each component's sign; the change column is the mean absolute patch change per frame."""
    rng = np.random.default_rng(3)
    patches = {k: rng.integers(0, 256, (24, 32), dtype=np.uint8) for k in (0, 2, 4, 6, 8, 10, 12)}
    out = pf._appearance(patches, 14)
    keys = sorted(patches)
    x = np.stack([patches[k].astype(np.float64).ravel() for k in keys])
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1.0)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    want = centred @ vt[:pf.N_APPEARANCE].T
    got = out[keys, :pf.N_APPEARANCE]
    for c in range(pf.N_APPEARANCE):
        sign = np.sign(got[:, c] @ want[:, c])
        np.testing.assert_allclose(got[:, c] * sign, want[:, c], atol=1e-9)
    np.testing.assert_allclose(out[keys[1:], pf.N_APPEARANCE], np.abs(np.diff(x, axis=0)).mean(axis=1) / 2)
    assert np.isnan(out[1]).all() and np.isnan(out[13]).all()


def test_cross_correlation_finds_a_planted_lead() -> None:
    """The single-series correlation (the proxy's first form): audio 4 frames early -> +4."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    corr = sp.cross_correlate(x[:-4], x[4:])
    assert -(int(np.argmax(corr)) - sp.MAX_LAG) == 4 and corr.max() == pytest.approx(1.0)
