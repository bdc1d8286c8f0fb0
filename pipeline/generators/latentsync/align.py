"""Aligning a tracked face to LatentSync's 256 x 256 face and pasting the result back.

The official inference warps each frame by a similarity transform that takes three points
(the two eyebrow centres and the nose centre, from InsightFace's 106 landmarks) onto a fixed
template, into a 210 x 280 crop that it then resizes to 256 x 256. Here the three points come
from the tracker's 68-point (iBUG) landmarks, or from the box where there are none; the warp
and the resize are one affine map, read only from the face's region of the frame (frames in
the run loop are YUV frames that convert the regions they are sliced to).

The patch that goes back holds the generated face warped into the frame; its alpha is the
mask's redrawn region, eroded and feathered, so the pixels outside the mouth stay the
original's exactly.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np

from pipeline.faces.types import Face
from pipeline.generators.blend import Patch

from .mask import FACE_SIZE, MASKED, mask_image

TEMPLATE_SCALE = 2.8  # the official AlignRestore's ratio for a 256 resolution
# the template's left brow, right brow and nose centre in the 210 x 280 crop (x 2.8 of the official units)
TEMPLATE = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]]) * TEMPLATE_SCALE
CROP_SIZE = (int(75 * TEMPLATE_SCALE), int(100 * TEMPLATE_SCALE))  # (210, 280) = (w, h), resized to 256 x 256
FILL = (127, 127, 127)  # the official fill outside the frame
LEFT_BROW, RIGHT_BROW, NOSE = slice(17, 22), slice(22, 27), slice(27, 36)  # iBUG-68 indices (dlib, InsightFace 1k3d68)
# InsightFace's 106-point layout (2d106det), the official LatentSync's own points
LEFT_BROW_106, RIGHT_BROW_106, NOSE_106 = [43, 48, 49, 51, 50], list(range(101, 106)), [74, 77, 83, 86]
BOX_POINTS = np.array([[0.3, 0.3], [0.7, 0.3], [0.5, 0.55]])  # brows and nose as fractions of a box (no landmarks)
ALPHA_ERODE = 9  # px of the 256 face the alpha is pulled inside the redrawn region
ALPHA_BLUR = 7.0  # px sigma of the alpha's feather in the 256 face
ALPHA_MIN = 0.5 / 255  # a weight below this changes no 8-bit pixel: 0, so the feather's tail touches nothing


def align_points(face: Face) -> np.ndarray:
    """(3, 2) frame points: left brow centre, right brow centre, nose centre, from 68 landmarks
    (dlib's or InsightFace's 1k3d68) or 106 (InsightFace's 2d106det, the official's indices); from
    the box where there are none."""
    if face.landmarks is not None and len(face.landmarks) in (68, 106):
        lm = np.asarray(face.landmarks, np.float64)
        brows_nose = (LEFT_BROW, RIGHT_BROW, NOSE) if len(lm) == 68 else (LEFT_BROW_106, RIGHT_BROW_106, NOSE_106)
        return np.stack([lm[part].mean(0) for part in brows_nose])
    x1, y1, x2, y2 = face.box
    return np.array([x1, y1]) + BOX_POINTS * np.array([x2 - x1, y2 - y1])


def face_matrix(points: np.ndarray) -> np.ndarray:
    """(2, 3) affine from frame pixels to the 256 x 256 face: the official similarity fit (scale
    from the points' standard deviations, rotation by SVD) followed by the 210x280 -> 256 resize."""
    src, dst = np.asarray(points, np.float64), TEMPLATE
    src_c, dst_c = src - src.mean(0), dst - dst.mean(0)
    s1, s2 = src_c.std(ddof=1), dst_c.std(ddof=1)  # torch.std: the sample standard deviation
    u, _, vt = np.linalg.svd((src_c / s1).T @ (dst_c / s2))
    rot = vt.T @ u.T
    if np.linalg.det(rot) < 0:
        vt[-1] *= -1
        rot = vt.T @ u.T
    linear = (s2 / s1) * rot  # (2, 2)
    shift = dst.mean(0) - linear @ src.mean(0)
    resize = np.diag([FACE_SIZE / CROP_SIZE[0], FACE_SIZE / CROP_SIZE[1]])
    return np.hstack([resize @ linear, (resize @ shift)[:, None]])  # (2, 3)


def _bounds(matrix: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The frame box (x1, y1, x2, y2), clipped to the frame, that the 256 face covers."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [FACE_SIZE, 0, 1], [0, FACE_SIZE, 1], [FACE_SIZE, FACE_SIZE, 1]], np.float64)
    pts = corners @ inverse.T  # (4, 2)
    x1, y1 = np.floor(pts.min(0)).astype(int) - 1
    x2, y2 = np.ceil(pts.max(0)).astype(int) + 1
    return max(0, x1), max(0, y1), min(width, x2), min(height, y2)


def _shifted(matrix: np.ndarray, x: int, y: int) -> np.ndarray:
    """``matrix`` for a region whose top-left is frame pixel (x, y)."""
    out = matrix.copy()
    out[:, 2] += matrix[:, :2] @ np.array([x, y], np.float64)
    return out


def warp_face(frame: Any, matrix: np.ndarray) -> np.ndarray | None:
    """The aligned face, RGB uint8 (256, 256, 3), read from the frame's face region only;
    None when the face lies outside the frame."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = _bounds(matrix, width, height)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    region = np.ascontiguousarray(frame[y1:y2, x1:x2])  # BGR (h, w, 3)
    face = cv2.warpAffine(region, _shifted(matrix, x1, y1), (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=FILL)
    return cv2.cvtColor(face, cv2.COLOR_BGR2RGB)


@functools.cache
def _face_alpha() -> np.ndarray:
    """(256, 256) float32: the redrawn region, eroded and feathered, 0 outside it."""
    redrawn = (mask_image() == MASKED).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ALPHA_ERODE + 1, 2 * ALPHA_ERODE + 1))
    alpha = cv2.GaussianBlur(cv2.erode(redrawn, kernel).astype(np.float32), (0, 0), ALPHA_BLUR)
    alpha[alpha < ALPHA_MIN] = 0.0
    alpha.setflags(write=False)
    return alpha


def face_patch(face_rgb: np.ndarray, matrix: np.ndarray, width: int, height: int) -> Patch | None:
    """The generated 256 x 256 RGB face warped back into the frame as a Patch (BGR), cut to the
    box where its alpha is not 0: the pixels outside it, the upper face above all, are never
    touched (the paste converts its whole box between YUV and BGR, which is not lossless)."""
    x1, y1, x2, y2 = _bounds(matrix, width, height)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    back = cv2.invertAffineTransform(_shifted(matrix, x1, y1))  # face -> region pixels
    alpha = cv2.warpAffine(_face_alpha(), back, (x2 - x1, y2 - y1), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    alpha[alpha < ALPHA_MIN] = 0.0
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if len(rows) == 0:
        return None
    top, left = y1 + int(rows[0]), x1 + int(cols[0])
    bottom, right = y1 + int(rows[-1]) + 1, x1 + int(cols[-1]) + 1
    back = cv2.invertAffineTransform(_shifted(matrix, left, top))  # face -> the cut box's pixels
    image = cv2.warpAffine(cv2.cvtColor(face_rgb, cv2.COLOR_RGB2BGR), back, (right - left, bottom - top),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = alpha[top - y1:bottom - y1, left - x1:right - x1]
    return Patch(box=(left, top, right, bottom), image=image, alpha=np.clip(alpha, 0.0, 1.0))
