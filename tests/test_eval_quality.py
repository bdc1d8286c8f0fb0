"""PSNR / SSIM: identical frames, a known noise level, and skimage with the pinned arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from eval import quality
from eval.results import METRICS, Score, Scores, unavailable


def _frame(seed: int = 0, shape: tuple[int, ...] = (96, 128, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 216, shape, dtype=np.uint8)


def test_identical_frames_give_inf_and_one() -> None:
    a = _frame()
    assert quality.psnr(a, a.copy()) == math.inf
    assert quality.ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)


def test_gaussian_noise_gives_analytic_psnr() -> None:
    """Noise of sigma 5 on values far from 0 and 255 (no clipping): MSE ~= 25."""
    rng = np.random.default_rng(1)
    a = np.full((480, 640, 3), 128, np.uint8)
    noise = rng.normal(0.0, 5.0, a.shape)
    b = np.clip(np.rint(a + noise), 0, 255).astype(np.uint8)
    # rounding to integers adds uniform noise of variance 1/12
    expected = 10 * math.log10(255.0 ** 2 / (25.0 + 1 / 12))
    assert quality.psnr(a, b) == pytest.approx(expected, abs=0.05)


def test_ssim_equals_direct_skimage_call() -> None:
    a, b = _frame(2), _frame(3)
    b = ((a.astype(np.int16) + b) // 2).astype(np.uint8)
    direct = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                   data_range=255, channel_axis=-1)
    assert quality.ssim(a, b) == pytest.approx(direct, rel=0, abs=1e-12)
    assert 0 < direct < 1


@pytest.mark.parametrize("shape", [(720, 1280, 3), (513, 640, 3), (11, 11, 3), (12, 300, 3), (97, 61), (69, 3000),
                                   (40, 40, 4)])
def test_ssim_matches_skimage_on_every_shape(shape: tuple[int, ...]) -> None:
    """The OpenCV computation equals skimage's on large frames, on images no larger than the
    window (where the reflected borders decide every value), on heights that end a band of
    rows inside the averaged border (513 rows of 640 px: 128-row bands; 69 rows of 3000 px:
    27-row bands), on grey and 4-channel images,
    and on a constant pair and a pair of opposites."""
    a, noise = _frame(4, shape), _frame(5, shape)
    b = np.clip(a.astype(np.int16) + noise // 8 - 13, 0, 255).astype(np.uint8)
    args = dict(quality.SSIM_ARGS, channel_axis=-1 if len(shape) == 3 else None)
    assert quality.ssim(a, b) == pytest.approx(structural_similarity(a, b, **args), rel=0, abs=1e-12)
    flat = np.full(shape, 77, np.uint8)
    assert quality.ssim(flat, flat) == pytest.approx(1.0, abs=1e-12)
    assert quality.ssim(a, 255 - a) == pytest.approx(structural_similarity(a, 255 - a, **args), rel=0, abs=1e-12)


def test_ssim_refuses_images_smaller_than_its_window() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        quality.ssim(np.zeros((10, 40, 3), np.uint8), np.zeros((10, 40, 3), np.uint8))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differently shaped"):
        quality.psnr(_frame(), _frame(shape=(96, 120, 3)))


def test_lower_face_box_and_sampling() -> None:
    assert quality.lower_face_box((10.0, 20.0, 70.0, 100.0), 128, 96) == (10, 60, 70, 96)
    assert quality.lower_face_box((120.0, 0.0, 140.0, 30.0), 128, 96) is None  # clipped too small
    assert quality.sample_indices(100, 4) == [12, 37, 62, 87]
    assert quality.sample_indices(3, 25) == [0, 1, 2]
    assert quality.sample_indices(0, 4) == []


def test_accumulator_crops_the_lower_face() -> None:
    a = _frame(4)
    b = a.copy()
    b[:40] = 0  # upper part differs, the lower face region (rows 50..90) is identical
    acc = quality.QualityAccumulator({"psnr_full": frozenset({0, 2}), "ssim_full": frozenset({0}),
                                      "psnr_face": frozenset({0, 1}), "ssim_face": frozenset({0, 1})})
    assert acc.wanted == {0, 1, 2}
    acc.add(0, a, b, (20.0, 10.0, 100.0, 90.0))
    acc.add(1, a, b, None)
    acc.add(2, a, a, None)  # PSNR only: a full frame needs no face box
    means = acc.means()
    assert means["psnr_face"] == math.inf and means["ssim_face"] == pytest.approx(1.0)
    assert means["psnr_full"] == math.inf and len(acc.values["psnr_full"]) == 2
    assert acc.values["psnr_full"][0] < 20 and means["ssim_full"] < 0.9 and len(acc.values["ssim_full"]) == 1
    assert acc.face_missing == 1


def test_sample_plan_per_metric() -> None:
    plan = quality.sample_plan(100, {"psnr_full": 4, "ssim_full": 1})
    assert plan == {"psnr_full": frozenset({12, 37, 62, 87}), "ssim_full": frozenset({50})}


def test_psnr_is_the_float64_mean_bit_for_bit() -> None:
    """The fast path (OpenCV's exact integer sum of squares) equals the float64 formula
    exactly: on whole frames, non-contiguous crops, single channels cut out of a colour
    frame, 4-channel images, a 1080p frame, and at the extremes (0 against 255)."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (301, 160, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (301, 160, 3), dtype=np.uint8)
    black, white = np.zeros((200, 64, 3), np.uint8), np.full((200, 64, 3), 255, np.uint8)
    hd = [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8) for _ in range(2)]
    quad = [rng.integers(0, 256, (33, 50, 4), dtype=np.uint8) for _ in range(2)]
    for x, y in ((a, b), (a[:40], b[:40]), (a[7:290, 11:150], b[7:290, 11:150]), (a[..., 0], b[..., 1]),
                 (black, white), hd, quad):
        mse = float(np.mean(np.square(x.astype(np.float64) - y.astype(np.float64))))
        assert quality.psnr(x, y) == 10 * math.log10(255.0 ** 2 / mse)


def test_scores_rows_are_what_storage_takes() -> None:
    scores = Scores((Score("psnr_full", math.inf, None, {"a": 1}), Score("ssim_full", 0.9, None, {}),
                     Score("lse_d", None, "n/a (no SyncNet weights): put it there", {})), {"numpy": "x"})
    rows = scores.rows()
    assert [set(r) for r in rows] == [{"metric", "value", "reason", "convention"}] * 3
    assert rows[0]["value"] is None and "identical" in rows[0]["reason"]
    assert rows[1] == {"metric": "ssim_full", "value": 0.9, "reason": None, "convention": {}}
    assert scores.get("lse_d").reason.startswith("n/a (no SyncNet weights)")
    with pytest.raises(ValueError, match="no reason"):
        Score("lse_c", None, None, {})
    nothing = unavailable("n/a (scoring failed: boom)")
    assert [r["metric"] for r in nothing.rows()] == list(METRICS)
    assert all(r["value"] is None and r["reason"] == "n/a (scoring failed: boom)" for r in nothing.rows())
    from storage.records import score_row

    assert [score_row(r)["value"] for r in rows] == [None, 0.9, None]


def test_face_only_frames_may_stay_i420() -> None:
    """A frame sampled only for the face metrics can be added as I420 (converted only in its
    crop, odd crop corners included): the same values as adding its whole BGR conversion."""
    import cv2

    from pipeline.media.yuv import YuvFrame

    rng = np.random.default_rng(3)
    a, b = (YuvFrame(rng.integers(0, 256, (96 * 3 // 2, 128), np.uint8)) for _ in range(2))  # (H*3/2, W)
    plan = {"psnr_face": frozenset({0}), "ssim_face": frozenset({0})}
    box = (21.3, 11.0, 97.6, 83.4)  # lower half starts on an odd row and column
    yuv, bgr = quality.QualityAccumulator(dict(plan)), quality.QualityAccumulator(dict(plan))
    yuv.add(0, a, b, box)
    bgr.add(0, *(cv2.cvtColor(f.data, cv2.COLOR_YUV2BGR_I420) for f in (a, b)), box)
    assert yuv.values == bgr.values and len(yuv.values["ssim_face"]) == 1


def test_accumulator_means_do_not_depend_on_the_order() -> None:
    """Scoring adds sampled frames from two threads in whatever order they finish: the
    means must be the same, bit for bit, as adding them in frame order."""
    frames = {i: (_frame(10 + i), _frame(40 + i)) for i in range(7)}
    plan = {"psnr_full": frozenset(range(7)), "ssim_full": frozenset({3}),
            "psnr_face": frozenset(range(0, 7, 2)), "ssim_face": frozenset({1, 4, 6})}
    box = (10.0, 8.0, 110.0, 90.0)
    in_order, shuffled = quality.QualityAccumulator(dict(plan)), quality.QualityAccumulator(dict(plan))
    for i in range(7):
        in_order.add(i, *frames[i], box)
    for i in (5, 0, 6, 3, 1, 4, 2):
        shuffled.add(i, *frames[i], None if i == 2 else box)
    shuffled_means, ordered_means = shuffled.means(), in_order.means()
    assert shuffled.face_missing == 1 and in_order.face_missing == 0
    assert shuffled_means["psnr_full"] == ordered_means["psnr_full"]  # exact, not approx
    assert shuffled_means["ssim_face"] == ordered_means["ssim_face"]
    assert shuffled_means["ssim_full"] == ordered_means["ssim_full"]
    psnrs = [quality.psnr(*frames[i]) for i in range(7)]
    assert ordered_means["psnr_full"] == float(np.mean(psnrs))
