"""pipeline.generators.blend: Patch validation, the feathered mask and the alpha composite."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.generators.blend import Patch, feather_mask, paste


def _frame(value: int = 100, h: int = 40, w: int = 50) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def _patch(box: tuple[int, int, int, int], value: int, alpha: float | np.ndarray) -> Patch:
    x1, y1, x2, y2 = box
    h, w = y2 - y1, x2 - x1
    a = np.full((h, w), alpha, np.float32) if np.isscalar(alpha) else alpha
    return Patch(box=box, image=np.full((h, w, 3), value, np.uint8), alpha=a)


def test_patch_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="10x5"):
        Patch(box=(0, 0, 10, 5), image=np.zeros((5, 9, 3), np.uint8), alpha=np.zeros((5, 10), np.float32))
    with pytest.raises(ValueError):
        Patch(box=(0, 0, 10, 5), image=np.zeros((5, 10, 3), np.uint8), alpha=np.zeros((4, 10), np.float32))


def test_feather_mask_is_one_inside_and_fades_to_the_border() -> None:
    m = feather_mask(40, 60, feather=0.2)
    assert m.shape == (40, 60) and m.dtype == np.float32
    assert m[20, 30] == pytest.approx(1.0)
    assert m[0, 0] < 0.01 and m[0, 30] < 0.05 and m[20, 0] < 0.05
    assert np.allclose(m, m[::-1, :]) and np.allclose(m, m[:, ::-1])  # symmetric
    row = m[20, :30]
    assert np.all(np.diff(row) >= -1e-6)  # rises monotonically towards the middle
    assert 0.0 <= m.min() and m.max() <= 1.0


def test_paste_alpha_one_replaces_and_alpha_zero_keeps() -> None:
    frame = _frame(100)
    out = paste(frame, _patch((10, 5, 30, 25), 200, 1.0))
    assert out is frame  # in place
    assert np.all(frame[5:25, 10:30] == 200)
    assert np.all(frame[:5] == 100) and np.all(frame[:, :10] == 100) and np.all(frame[25:] == 100)
    frame2 = _frame(100)
    paste(frame2, _patch((10, 5, 30, 25), 200, 0.0))
    assert np.all(frame2 == 100)


def test_paste_half_alpha_averages_with_rounding() -> None:
    frame = _frame(100)
    paste(frame, _patch((0, 0, 4, 4), 201, 0.5))
    assert np.all(frame[:4, :4] == 151)  # 100 + 0.5 * 101 = 150.5 -> 151


def test_paste_clips_patches_reaching_past_the_frame() -> None:
    frame = _frame(0, h=20, w=20)
    alpha = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (10, 1))  # (10, 10), varies along x
    paste(frame, _patch((-5, 15, 5, 25), 255, alpha))
    # frame columns 0..4 are patch columns 5..9, rows 15..19 are patch rows 0..4
    expected = np.clip(255 * alpha[0, 5:] + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(frame[15, :5, 0], expected)
    assert np.all(frame[:15] == 0) and np.all(frame[:, 5:] == 0)


def test_paste_outside_the_frame_is_a_no_op() -> None:
    frame = _frame(7)
    paste(frame, _patch((60, 50, 70, 60), 255, 1.0))
    paste(frame, _patch((-20, -20, -1, -1), 255, 1.0))
    assert np.all(frame == 7)
