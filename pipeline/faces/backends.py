"""The two face-tracker backends, where their weights are, and picking one.

- :class:`InsightFaceTracker`: InsightFace 2.1 ``FaceAnalysis`` restricted to its detector
  and one landmark model (``landmark_3d_68`` preferred: the 68-point layout; else
  ``landmark_2d_106``, whose mouth points feed :attr:`Face.mouth`). The pack is looked up
  on disk only, as ``<root>/models/<name>`` with root from the argument,
  ``$LIPSYNC_INSIGHTFACE_ROOT`` or ``~/.insightface``; the pack directory itself is handed
  to ``FaceAnalysis``, so InsightFace never tries to download it.
- :class:`DlibTracker`: dlib's HOG frontal detector and the 68-point shape predictor that
  ships in the ``face-recognition-models`` package (found on disk, not imported: that
  package's ``__init__`` needs ``pkg_resources``).

Model objects are loaded once per process and configuration; calls into them are
serialised by a lock per tracker, so one tracker can serve several jobs' threads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import WeightsUnavailable
from pipeline.faces.types import Face, FaceTracker
from pipeline.options import TRACKERS

log = logging.getLogger(__name__)

KINDS = TRACKERS  # make_tracker's kinds: RunOptions.tracker's choices
INSIGHTFACE_ROOT_ENV = "LIPSYNC_INSIGHTFACE_ROOT"
INSIGHTFACE_DEFAULT_ROOT = "~/.insightface"
INSIGHTFACE_DET_SIZE = 320  # px: SCRFD input side; tracking frames are ~384 px on the long side
INSIGHTFACE_DET_THRESH = 0.5
INSIGHTFACE_MOUTH = slice(52, 72)  # the 20 mouth points of the 106-point layout
DLIB_PREDICTOR = "shape_predictor_68_face_landmarks.dat"
DLIB_UPSAMPLE_MAX_SIDE = 640  # px: a frame without faces is searched again upsampled x2 up to this size
DLIB_THRESHOLD = 0.0  # HOG detector score threshold (dlib's default)
CACHE_DIR_ENV = "LIPSYNC_CACHE_DIR"  # where derived files live (default $XDG_CACHE_HOME/lipsync-lab)


def insightface_pack_dir(name: str = "buffalo_l", root: str | None = None) -> Path:
    """Where the InsightFace pack ``name`` would be; ``name`` may itself be a directory."""
    direct = Path(name).expanduser()
    if direct.is_dir():
        return direct.resolve()
    base = root or os.environ.get(INSIGHTFACE_ROOT_ENV) or INSIGHTFACE_DEFAULT_ROOT
    return Path(base).expanduser() / "models" / name


def _insightface_files(pack: Path) -> tuple[str | None, str]:
    """(landmark task, reason): which landmark model the pack offers, or why it is unusable."""
    if not pack.is_dir():
        return None, f"no InsightFace model pack at {pack} (unzip one there or set {INSIGHTFACE_ROOT_ENV})"
    if (pack / "manifest.json").is_file():
        return "manifest", "model pack with manifest"
    names = {p.name for p in pack.glob("*.onnx")}
    if not any(n.startswith(("det_", "scrfd")) for n in names):
        return None, f"no face detector (det_*.onnx / scrfd*.onnx) in {pack}"
    if "1k3d68.onnx" in names:
        return "landmark_3d_68", "detector + 68-point landmarks (1k3d68)"
    if "2d106det.onnx" in names:
        return "landmark_2d_106", "detector + 106-point landmarks (2d106det; mouth points only)"
    return None, f"no landmark model (1k3d68.onnx / 2d106det.onnx) in {pack}"


def dlib_predictor_path() -> Path | None:
    """The 68-point predictor inside the face-recognition-models package, if installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "models" / DLIB_PREDICTOR
        if path.is_file():
            return path
    return None


def tracker_status(*, insightface_name: str = "buffalo_l",
                   insightface_root: str | None = None) -> dict[str, dict[str, object]]:
    """Whether each backend can run here, from what files, and why (not)."""
    pack = insightface_pack_dir(insightface_name, insightface_root)
    task, reason = _insightface_files(pack)
    if task is not None and importlib.util.find_spec("insightface") is None:
        task, reason = None, "the insightface package is not installed"
    predictor = dlib_predictor_path()
    if predictor is None:
        dlib_reason = "face-recognition-models is not installed (pip install face-recognition-models)"
    elif importlib.util.find_spec("dlib") is None:
        dlib_reason = "dlib is not installed (pip install dlib-bin)"
    else:
        dlib_reason = "HOG frontal detector + 68-point shape predictor"
    dlib_ok = predictor is not None and importlib.util.find_spec("dlib") is not None
    return {
        "insightface": {"available": task is not None, "path": str(pack), "reason": reason,
                        "landmarks": task},
        "dlib": {"available": dlib_ok, "path": str(predictor) if predictor else None,
                 "reason": dlib_reason, "landmarks": "68" if dlib_ok else None},
    }


def _by_size(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: f.width * f.height, reverse=True)


def cache_dir() -> Path:
    """``$LIPSYNC_CACHE_DIR``, else ``$XDG_CACHE_HOME/lipsync-lab``, else ``~/.cache/lipsync-lab``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "lipsync-lab"


def frontal_face_detector() -> object:
    """dlib's HOG frontal face detector, loaded from its serialised copy in :func:`cache_dir`
    (under a millisecond) once a first load has written it there: ``get_frontal_face_detector``
    itself rebuilds it from the text compiled into dlib, 0.17-0.2 s of a CLI job's start-up.
    The copy is named by dlib's version; an unreadable copy is rebuilt, and a cache folder
    that cannot be written only costs the faster load next time."""
    import dlib

    path = cache_dir() / f"dlib-{dlib.__version__}-frontal_face_detector.svm"
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except RuntimeError as exc:
            log.warning("rebuilding dlib's face detector: its cached copy %s is unreadable (%s)", path.name, exc)
    detector = dlib.get_frontal_face_detector()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        detector.save(str(tmp))
        os.replace(tmp, path)  # whole or not at all, whoever writes it at the same time
    except (OSError, RuntimeError) as exc:
        log.info("not caching dlib's face detector in %s: %s", path.parent, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
    return detector


class DlibTracker(FaceTracker):
    """dlib HOG frontal detector (from :func:`frontal_face_detector`) + 68-point predictor
    (loaded on first use)."""

    name = "dlib"
    accepts_gray = True

    def __init__(self, predictor_path: Path) -> None:
        import dlib

        self._dlib = dlib
        self._detector = frontal_face_detector()
        # The 68-point model loads on the first fit (or load()): a job that tracks boxes only
        # (Wav2Lip, LatentSync) never pays its 0.37 s parse of 99 MB.
        self._predictor: object | None = None
        self._lock = threading.Lock()
        self.path = str(predictor_path)

    def load(self) -> None:
        with self._lock:
            self._landmark_model()

    def _landmark_model(self):  # noqa: ANN202 - dlib.shape_predictor; call with self._lock held
        if self._predictor is None:
            self._predictor = self._dlib.shape_predictor(self.path)
        return self._predictor

    @staticmethod
    def _gray(frame: np.ndarray) -> np.ndarray:
        """A C-contiguous grey image: dlib reads a strided view (a crop of a larger frame) as
        if its rows were contiguous, so it would see the wrong pixels (and past the view)."""
        return np.ascontiguousarray(frame) if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)

    def detect(self, frame: np.ndarray, *, landmarks: bool = True) -> list[Face]:
        gray = self._gray(frame)
        with self._lock:
            rects, scores, _ = self._detector.run(gray, 0, DLIB_THRESHOLD)
            if not rects and max(gray.shape) <= DLIB_UPSAMPLE_MAX_SIDE:
                rects, scores, _ = self._detector.run(gray, 1, DLIB_THRESHOLD)
        faces = _by_size([Face((float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1)),
                               None, float(s)) for r, s in zip(rects, scores)])
        return [self.landmarks(gray, f) for f in faces] if landmarks else faces

    def landmarks(self, frame: np.ndarray, face: Face) -> Face:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        rect = self._dlib.rectangle(x1, y1, x2 - 1, y2 - 1)
        gray = self._gray(frame)
        with self._lock:
            shape = self._landmark_model()(gray, rect)
        pts = np.array([(p.x, p.y) for p in shape.parts()], np.float32)  # (68, 2)
        return Face(face.box, pts, face.score)


class InsightFaceTracker(FaceTracker):
    """InsightFace ``FaceAnalysis``: SCRFD detector + one landmark model."""

    name = "insightface"

    def __init__(self, pack: Path, task: str) -> None:
        import onnxruntime
        from insightface.app import FaceAnalysis

        gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        modules = ["detection", "landmark_3d_68", "landmark_2d_106"] if task == "manifest" else ["detection", task]
        self._app = FaceAnalysis(name=str(pack), allowed_modules=modules)
        side = INSIGHTFACE_DET_SIZE
        self._app.prepare(ctx_id=0 if gpu else -1, det_thresh=INSIGHTFACE_DET_THRESH, det_size=(side, side))
        found = [t for t in ("landmark_3d_68", "landmark_2d_106") if t in self._app.models]
        if not found:
            raise WeightsUnavailable(f"InsightFace pack {pack} has no landmark model")
        self.task = found[0]
        self._lock = threading.Lock()
        self.path = str(pack)

    def detect(self, frame: np.ndarray, *, landmarks: bool = True) -> list[Face]:
        with self._lock:
            bboxes, _ = self._app.det_model.detect(frame, max_num=0, metric="default")
        faces = _by_size([Face(tuple(float(v) for v in b[:4]), None, float(b[4]))  # type: ignore[arg-type]
                          for b in bboxes])
        return [self.landmarks(frame, f) for f in faces] if landmarks else faces

    def landmarks(self, frame: np.ndarray, face: Face) -> Face:
        from insightface.app.common import Face as InsightFace

        probe = InsightFace(bbox=np.asarray(face.box, np.float32), kps=None, det_score=face.score)
        with self._lock:
            pred = np.asarray(self._app.models[self.task].get(frame, probe), np.float32)
        if self.task == "landmark_3d_68":
            return Face(face.box, np.ascontiguousarray(pred[:, :2]), face.score)  # (68, 3) -> (68, 2)
        return Face(face.box, None, face.score, np.ascontiguousarray(pred[INSIGHTFACE_MOUTH, :2]))


_trackers: dict[tuple[str, str], FaceTracker] = {}
_trackers_lock = threading.Lock()


def make_tracker(kind: str = "auto", *, insightface_name: str = "buffalo_l",
                 insightface_root: str | None = None) -> FaceTracker:
    """See :func:`pipeline.faces.make_tracker`."""
    if kind not in KINDS:
        raise ValueError(f"unknown face tracker {kind!r}: choose one of {', '.join(KINDS)}")
    status = tracker_status(insightface_name=insightface_name, insightface_root=insightface_root)
    if kind == "auto" and status["insightface"]["available"]:
        try:
            return _load("insightface", status["insightface"])
        except Exception as exc:  # a broken pack must not stop a job that dlib can serve
            log.warning("InsightFace pack at %s failed to load (%s); using dlib",
                        status["insightface"]["path"], exc)
    if kind == "auto":
        log.info("face tracker: dlib (InsightFace: %s)", status["insightface"]["reason"])
        kind = "dlib"
    info = status[kind]
    if not info["available"]:
        raise WeightsUnavailable(f"{kind} face tracker unavailable: {info['reason']}")
    return _load(kind, info)


def _load(kind: str, info: dict[str, object]) -> FaceTracker:
    key = (kind, str(info["path"]))
    with _trackers_lock:
        tracker = _trackers.get(key)
        if tracker is None:
            if kind == "insightface":
                tracker = InsightFaceTracker(Path(str(info["path"])), str(info["landmarks"]))
            else:
                tracker = DlibTracker(Path(str(info["path"])))
            log.info("loaded %s face tracker from %s", kind, info["path"])
            _trackers[key] = tracker
    return tracker
