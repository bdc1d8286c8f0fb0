"""Faces: what a face is (box, landmarks, mouth), and the detection backends' interface.

Two backends implement :class:`FaceTracker` (see ``pipeline/faces/backends.py``):

- ``insightface``: InsightFace ``FaceAnalysis`` (SCRFD detector + the ``1k3d68`` 68-point
  landmark model, or the ``2d106det`` model where a pack lacks ``1k3d68``). Used only when
  its model pack is already on disk: ``$LIPSYNC_INSIGHTFACE_ROOT/models/<name>`` (default
  root ``~/.insightface``). Nothing is ever downloaded here.
- ``dlib``: dlib's HOG frontal detector + the 68-point shape predictor shipped inside the
  ``face-recognition-models`` package; fully offline, always available.

``make_tracker("auto")`` picks InsightFace when its pack is present, dlib otherwise.

Landmarks follow the iBUG-300W 68-point layout (dlib's): jaw 0-16, brows 17-26, nose
27-35, eyes 36-47, outer lips 48-59, inner lips 60-67. :attr:`Face.mouth` gives the
geometry the baseline generator needs from either a 68-point layout or, for 106-point-only
InsightFace packs, from the mouth points alone.

Tracking one face through a video is ``pipeline/faces/tracking.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import cv2
import numpy as np


Box = tuple[float, float, float, float]  # (x1, y1, x2, y2) pixels

N_LANDMARKS = 68
CHIN = 8
NOSE_BRIDGE_TOP = 27
NOSE_BOTTOM = 33
MOUTH_LEFT, MOUTH_RIGHT = 48, 54
UPPER_INNER = (60, 61, 62, 63, 64)  # inner edge of the upper lip, left to right
LOWER_INNER = (60, 67, 66, 65, 64)  # inner edge of the lower lip, left to right
OUTER_LOWER = (48, 59, 58, 57, 56, 55, 54)  # outer edge of the lower lip, left to right

ROI_MARGIN = 0.6  # a re-detection searches the last box grown by this fraction of its size per side
ROI_FACE_PX = 96  # px: a re-detection rescales its search region so the face is about this wide (HOG window: 80)
LANDMARK_MARGIN = 0.25  # landmarks_in crops the box grown by this fraction of its size per side
LUMA_GAIN = 255 / 219  # limited-range luma (16..235) to full-range grey
LANDMARK_FACE_PX = 192  # landmarks_in fits on a crop scaled so the face box is at most this wide


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Mouth:
    """Mouth geometry in one frame (pixels). Lip curves run left to right."""

    upper_inner: np.ndarray  # (n, 2) inner edge of the upper lip
    lower_inner: np.ndarray  # (n, 2) inner edge of the lower lip
    lower_outer: np.ndarray  # (m, 2) outer edge of the lower lip
    chin: np.ndarray  # (2,) lowest point of the jaw
    nose: np.ndarray  # (2,) bottom of the nose

    @property
    def left(self) -> np.ndarray:
        return self.lower_inner[0]

    @property
    def right(self) -> np.ndarray:
        return self.lower_inner[-1]

    @property
    def width(self) -> float:
        return float(np.linalg.norm(self.right - self.left))

    @property
    def opening(self) -> float:
        """Mean vertical gap between the inner lip edges (pixels)."""
        return float(np.mean(self.lower_inner[1:-1, 1] - self.upper_inner[1:-1, 1]))


@dataclass(frozen=True, eq=False)
class Face:
    """One face in one frame: box, 68 landmarks (or None) and detector score.

    ``mouth_points`` carries the mouth of landmark layouts that do not map onto the 68
    points (InsightFace's 106-point model): (K, 2) points around the lips.
    """

    box: Box
    landmarks: np.ndarray | None  # (68, 2) float32
    score: float
    mouth_points: np.ndarray | None = field(default=None, repr=False)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def mouth(self) -> Mouth | None:
        """Mouth geometry from the 68 landmarks, else from ``mouth_points``, else None."""
        if self.landmarks is not None:
            p = self.landmarks
            return Mouth(p[list(UPPER_INNER)], p[list(LOWER_INNER)], p[list(OUTER_LOWER)],
                         p[CHIN], p[NOSE_BOTTOM])
        if self.mouth_points is None:
            return None
        pts = self.mouth_points
        left, right = pts[np.argmin(pts[:, 0])], pts[np.argmax(pts[:, 0])]
        centre = (left + right) / 2  # a closed mouth: both inner edges meet at the centre line
        line = np.stack([left, centre, right]).astype(np.float32)  # (3, 2)
        bottom = np.array([centre[0], pts[:, 1].max()], np.float32)
        x1, _, x2, y2 = self.box
        nose_y = centre[1] - 0.5 * (bottom[1] - centre[1]) - 0.08 * self.height
        return Mouth(line, line, np.stack([left, bottom, right]).astype(np.float32),
                     np.array([(x1 + x2) / 2, y2], np.float32), np.array([centre[0], nose_y], np.float32))

    def scaled(self, s: float) -> Face:
        """This face with every coordinate multiplied by ``s``."""
        return Face(tuple(float(v) * s for v in self.box),  # type: ignore[arg-type]
                    None if self.landmarks is None else (self.landmarks * s).astype(np.float32),
                    self.score,
                    None if self.mouth_points is None else (self.mouth_points * s).astype(np.float32))


class FaceTracker(ABC):
    """A face detector with a landmark model. Coordinates are those of the given frame."""

    name: str
    accepts_gray = False  # whether detect/landmarks take (H, W) grey frames as well as BGR

    @abstractmethod
    def detect(self, frame: np.ndarray, *, landmarks: bool = True) -> list[Face]:
        """All faces in ``frame`` (BGR uint8), largest first; without landmarks if asked."""

    @abstractmethod
    def landmarks(self, frame: np.ndarray, face: Face) -> Face:
        """``face`` with its landmarks (or mouth points) filled in from ``frame``."""

    def load(self) -> None:
        """Load now whatever the tracker loads on first use (dlib's landmark model: a server
        warms it up; a job that tracks boxes only never needs it)."""

    def landmarks_in(self, frame: np.ndarray, face: Face, *, margin: float = LANDMARK_MARGIN,
                     interpolation: int = cv2.INTER_AREA) -> Face:
        """``face`` (a box in ``frame``'s pixels) with landmarks fitted on a crop of ``frame``
        around its box: for full-resolution frames, where converting the whole frame
        would cost more than the fit. ``interpolation`` scales the crop down: area averaging
        (the default, as the scorer's decoder scales) or cv2.INTER_LINEAR: 0.72x the CPU per
        fit of a 720p face, its points 0.9 px from area's on average (bench/landmark_crops.py)."""
        h, w = frame.shape[:2]
        mx, my = margin * face.width, margin * face.height
        x1, y1 = max(0, int(face.box[0] - mx)), max(0, int(face.box[1] - my))
        x2, y2 = min(w, int(face.box[2] + mx) + 1), min(h, int(face.box[3] + my) + 1)
        if x2 - x1 < 8 or y2 - y1 < 8:
            return face
        # Fit on a crop scaled down so the face is at most LANDMARK_FACE_PX wide: dlib's cost
        # grows with the crop (its conversion copies it), its accuracy does not.
        s = min(1.0, LANDMARK_FACE_PX / max(face.width, 1.0))
        size = (max(8, round((x2 - x1) * s)), max(8, round((y2 - y1) * s)))
        sx, sy = size[0] / (x2 - x1), size[1] / (y2 - y1)
        crop = (gray_crop(frame, x1, y1, x2, y2, size=size, interpolation=interpolation)
                if self.accepts_gray else None)
        if crop is None:
            crop = frame[y1:y2, x1:x2]
            if s < 1.0:
                crop = cv2.resize(crop, size, interpolation=interpolation)
        local = Face(((face.box[0] - x1) * sx, (face.box[1] - y1) * sy,
                      (face.box[2] - x1) * sx, (face.box[3] - y1) * sy), None, face.score)
        fitted = self.landmarks(np.ascontiguousarray(crop), local)
        scale = np.array([1.0 / sx, 1.0 / sy], np.float32)
        shift = np.array([x1, y1], np.float32)
        return Face(face.box,
                    None if fitted.landmarks is None else fitted.landmarks * scale + shift,
                    face.score,
                    None if fitted.mouth_points is None else fitted.mouth_points * scale + shift)

    def detect_near(self, frame: np.ndarray, box: Box) -> list[Face]:
        """Faces (without landmarks) in a region around ``box``, rescaled so the face is
        about ``ROI_FACE_PX`` wide: cheaper than a full-frame search, and finds small faces
        that a full-frame search at this resolution misses."""
        h, w = frame.shape[:2]
        bw, bh = box[2] - box[0], box[3] - box[1]
        x1, y1 = max(0, int(box[0] - ROI_MARGIN * bw)), max(0, int(box[1] - ROI_MARGIN * bh))
        x2, y2 = min(w, int(box[2] + ROI_MARGIN * bw) + 1), min(h, int(box[3] + ROI_MARGIN * bh) + 1)
        if x2 - x1 < 16 or y2 - y1 < 16:
            return []
        s = ROI_FACE_PX / max(bw, 1.0)
        roi = frame[y1:y2, x1:x2]
        if abs(s - 1.0) > 0.1:
            roi = cv2.resize(roi, (max(1, round((x2 - x1) * s)), max(1, round((y2 - y1) * s))),
                             interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        else:
            s = 1.0
        found = self.detect(roi, landmarks=False)
        return [Face((f.box[0] / s + x1, f.box[1] / s + y1, f.box[2] / s + x1, f.box[3] / s + y1),
                     None, f.score) for f in found]


def gray_crop(frame: np.ndarray, x1: int, y1: int, x2: int, y2: int, *,
               size: tuple[int, int] | None = None, interpolation: int = cv2.INTER_AREA) -> np.ndarray | None:
    """The grey (H, W) region of an I420 frame (pipeline.media.yuv.YuvFrame: anything with
    ``planes()``) straight from its luma plane, limited range stretched to full as a
    BGR -> grey conversion of its BT.601 colours would give; None for other frames."""
    planes = getattr(frame, "planes", None)
    if not callable(planes):
        return None
    luma = planes()[0][y1:y2, x1:x2]
    if size is not None and size != (x2 - x1, y2 - y1):
        luma = cv2.resize(luma, size, interpolation=interpolation)  # (size[1], size[0])
    return cv2.convertScaleAbs(luma, alpha=LUMA_GAIN, beta=-16 * LUMA_GAIN)


def lerp_faces(a: Face, b: Face, t: float) -> Face:
    """The face a fraction ``t`` of the way from ``a`` to ``b`` (box, landmarks, score)."""

    def mix(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
        if x is None or y is None:
            return None
        return ((1 - t) * x + t * y).astype(np.float32)

    box = tuple((1 - t) * u + t * v for u, v in zip(a.box, b.box))
    return Face(box, mix(a.landmarks, b.landmarks), (1 - t) * a.score + t * b.score,  # type: ignore[arg-type]
                mix(a.mouth_points, b.mouth_points))
