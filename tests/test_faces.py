"""pipeline.faces / pipeline.faces.backends: backend choice, detection and tracking on the
real synthetic face (a photo shipped with scikit-image) with the real dlib models."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

import media
from pipeline.errors import NoFaceFound, WeightsUnavailable
from pipeline.faces.backends import dlib_predictor_path, insightface_pack_dir, tracker_status
from pipeline.faces.types import Face, FaceTracker, iou
from pipeline.faces.backends import make_tracker
from pipeline.faces.tracking import Track, track_frames

HALF = media.FACE_SIZE // 2  # px: tracking size of the synthetic frames (what run.py's scaling gives 768 px)


@pytest.fixture(scope="module")
def tracker() -> FaceTracker:
    return make_tracker("dlib")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [media.face_frame(i) for i in range(30)]


def _small(frame: np.ndarray) -> np.ndarray:
    return cv2.resize(frame, (HALF, HALF), interpolation=cv2.INTER_AREA)


def test_dlib_backend_is_found_offline() -> None:
    path = dlib_predictor_path()
    assert path is not None and path.name == "shape_predictor_68_face_landmarks.dat" and path.is_file()
    status = tracker_status()
    assert status["dlib"]["available"] is True and status["dlib"]["path"] == str(path)


def test_insightface_without_pack_falls_back_and_says_where(tmp_path) -> None:
    status = tracker_status(insightface_root=str(tmp_path))
    assert status["insightface"]["available"] is False
    assert str(tmp_path / "models" / "buffalo_l") in status["insightface"]["reason"]
    assert insightface_pack_dir("buffalo_s", str(tmp_path)) == tmp_path / "models" / "buffalo_s"
    with pytest.raises(WeightsUnavailable, match="insightface face tracker unavailable"):
        make_tracker("insightface", insightface_root=str(tmp_path))
    assert make_tracker("auto", insightface_root=str(tmp_path)).name == "dlib"
    with pytest.raises(ValueError, match="unknown face tracker"):
        make_tracker("opencv")


def test_insightface_pack_without_landmarks_is_unusable(tmp_path) -> None:
    pack = tmp_path / "models" / "half"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").write_bytes(b"not a model")
    status = tracker_status(insightface_name="half", insightface_root=str(tmp_path))
    assert status["insightface"]["available"] is False
    assert "no landmark model" in status["insightface"]["reason"]


def test_one_tracker_per_process(tracker: FaceTracker) -> None:
    assert make_tracker("dlib") is tracker


def test_detect_finds_the_face_with_landmarks(tracker: FaceTracker, frames: list[np.ndarray]) -> None:
    faces = tracker.detect(frames[0])
    assert len(faces) == 1
    face = faces[0]
    x1, y1, x2, y2 = face.box
    assert 90 < x1 < 130 and 90 < y1 < 130 and 100 < x2 - x1 < 160  # the photo's face
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    mouth = face.mouth
    assert y1 + 0.5 * face.height < mouth.left[1] < y2 + 0.1 * face.height  # the mouth is low in the box
    assert mouth.width > 0.2 * face.width
    assert mouth.nose[1] < mouth.upper_inner[:, 1].min() < mouth.chin[1]


def test_a_crop_view_is_detected_as_its_copy(tracker: FaceTracker, frames: list[np.ndarray]) -> None:
    """dlib does not read a strided numpy view (a crop of a larger grey frame, which
    ``detect_near`` hands over when no rescale is needed) as it reads the view's copy: on the
    old code 16 of these 40 crops found no face or another box, and which depended on the
    memory around the view, so a job's track changed from run to run."""
    grey = cv2.cvtColor(frames[0], cv2.COLOR_BGR2GRAY)
    grey = cv2.resize(grey, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)  # a ~75 px face
    face = tracker.detect(grey, landmarks=False)[0]
    x1, y1, x2, y2 = (int(v) for v in face.box)
    for dx in range(0, 30, 3):
        for dy in range(0, 28, 7):
            view = grey[max(0, y1 - dy):y2 + dy, max(0, x1 - dx):x2 + dx + 1]
            assert not view.flags["C_CONTIGUOUS"]
            copy = np.ascontiguousarray(view)
            want = tracker.detect(copy, landmarks=False)
            assert [f.box for f in tracker.detect(view, landmarks=False)] == [f.box for f in want], (dx, dy)
            if want:
                assert np.array_equal(tracker.landmarks(view, want[0]).landmarks,
                                      tracker.landmarks(copy, want[0]).landmarks), (dx, dy)


def test_landmarks_in_crop_match_full_frame(tracker: FaceTracker, frames: list[np.ndarray]) -> None:
    face = tracker.detect(frames[3])[0]
    bare = Face(face.box, None, face.score)
    cropped = tracker.landmarks_in(frames[3], bare)
    assert np.abs(cropped.landmarks - face.landmarks).max() <= 1.0


def test_landmarks_in_an_i420_frame_use_its_luma(tracker: FaceTracker, frames: list[np.ndarray]) -> None:
    """The run loop hands generators pipeline.media.yuv.YuvFrames; dlib fits on their Y plane."""
    from pipeline.media.yuv import YuvFrame

    bgr = frames[5]
    yuv = YuvFrame(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420))  # (H * 3 / 2, W)
    face = tracker.detect(bgr)[0]
    bare = Face(face.box, None, face.score)
    from_yuv = tracker.landmarks_in(yuv, bare)
    assert np.abs(from_yuv.landmarks - tracker.landmarks_in(bgr, bare).landmarks).mean() < 1.0


def test_track_at_half_resolution_maps_to_full(tracker: FaceTracker, frames: list[np.ndarray]) -> None:
    t0 = time.perf_counter()
    track = track_frames((_small(f) for f in frames), scale=2.0, tracker=tracker)
    per_frame_ms = (time.perf_counter() - t0) * 1000 / len(frames)
    assert isinstance(track, Track) and len(track) == len(frames)
    assert track.frames_without_face == 0
    assert 0 in track.sampled and 29 in track.sampled and len(track.sampled) < len(frames) / 2
    for i in (0, 7, 29):
        full = tracker.detect(frames[i])[0]
        assert iou(track.faces[i].box, full.box) > 0.6
        assert track.faces[i].landmarks is not None
    centres = np.array([[(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2] for f in track.faces])
    assert np.abs(np.diff(centres, axis=0)).max() < 6.0  # smoothed: no jumps (motion <= ~1 px/frame)
    assert track.at(1000) is track.faces[-1]
    assert per_frame_ms < 100  # generous (shared 2-core machine); measured ~1-3 ms/frame


def test_tracking_boxes_only_skips_the_fits(tracker: FaceTracker, frames: list[np.ndarray]) -> None:
    """``landmarks=False`` (a generator that fits its own): the same boxes, no landmarks."""
    full = track_frames((_small(f) for f in frames), scale=2.0, tracker=tracker)
    boxes = track_frames((_small(f) for f in frames), scale=2.0, tracker=tracker, landmarks=False)
    assert boxes.sampled == full.sampled and len(boxes) == len(full)
    assert all(f.landmarks is None for f in boxes.faces)
    np.testing.assert_allclose([f.box for f in boxes.faces], [f.box for f in full.faces], atol=1e-4)


def test_frames_without_a_face_are_counted_not_fatal(tracker: FaceTracker, frames: list[np.ndarray]) -> None:
    blank = np.full_like(frames[0], 128)
    seq = [blank if 12 <= i < 19 else f for i, f in enumerate(frames)]
    track = track_frames((_small(f) for f in seq), scale=2.0, tracker=tracker)
    missing = [i for i, f in enumerate(track.faces) if f is None]
    assert missing == list(range(12, 19))
    assert track.frames_without_face == 7


def test_no_face_anywhere_names_the_sampled_frames(tracker: FaceTracker) -> None:
    blank = np.full((HALF, HALF, 3), 90, np.uint8)
    with pytest.raises(NoFaceFound, match=r"no face found in any of the 3 sampled frames \(0, 5, 10\)"):
        track_frames([blank] * 11, scale=2.0, tracker=tracker)
    with pytest.raises(NoFaceFound, match="no frames"):
        track_frames([], scale=1.0, tracker=tracker)


def test_face_index_picks_the_nth_largest(tracker: FaceTracker) -> None:
    big = media.face_frame(0)  # 384 px, face ~125 px
    small = cv2.resize(big, (300, 300), interpolation=cv2.INTER_AREA)  # face ~98 px
    canvas = np.full((384, 700, 3), 200, np.uint8)
    canvas[:, :384] = big
    canvas[42:342, 395:695] = small
    seq = [canvas] * 6
    first = track_frames(seq, scale=1.0, tracker=tracker, face_index=0)
    second = track_frames(seq, scale=1.0, tracker=tracker, face_index=1)
    assert first.faces[0].box[2] < 384 <= second.faces[0].box[0]
    assert first.faces[0].width > second.faces[0].width
    assert all(f is not None and f.box[0] >= 384 for f in second.faces)  # it keeps following that face
    with pytest.raises(NoFaceFound, match="face_index=2"):
        track_frames(seq, scale=1.0, tracker=tracker, face_index=2)


def test_face_scaled_and_track_at() -> None:
    lm = np.arange(136, dtype=np.float32).reshape(68, 2)  # (68, 2)
    face = Face((1.0, 2.0, 3.0, 4.0), lm, 0.9)
    double = face.scaled(2.0)
    assert double.box == (2.0, 4.0, 6.0, 8.0) and np.array_equal(double.landmarks, lm * 2)
    assert Track([], 0, []).at(3) is None


def _same_faces(a: list[Face | None], b: list[Face | None]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if (x is None) != (y is None):
            return False
        if x is not None and not (np.allclose(x.box, y.box, atol=1e-9) and
                                  np.array_equal(x.landmarks, y.landmarks)):
            return False
    return True


@pytest.mark.parametrize("gap", [None, (12, 19), (0, 9), (3, 4), (22, 30), (6, 16)])
def test_streamed_faces_equal_the_whole_track(tracker: FaceTracker, frames: list[np.ndarray], gap) -> None:
    """TrackBuilder, fed a frame at a time (as the run loop's LiveTrack feeds it), reports
    faces as final only when no later frame can change them: every face it hands out equals
    the whole pass's, with the face leaving and coming back anywhere (edge scans included)."""
    from pipeline.faces.tracking import TrackBuilder

    blank = np.full_like(frames[0], 128)
    seq = [_small(blank if gap and gap[0] <= i < gap[1] else f) for i, f in enumerate(frames)]
    whole = track_frames(seq, scale=2.0, tracker=tracker)
    builder = TrackBuilder(tracker, scale=2.0)
    handed: list[Face | None] = []
    for frame in seq:
        builder.feed(frame)
        ready = builder.ready()
        assert ready < builder.n  # never the frames the detector has not passed yet
        if ready > len(handed):
            handed += builder.faces(len(handed), ready)
    assert 0 < len(handed) < len(seq)
    assert _same_faces(handed, whole.faces[:len(handed)])
    final = builder.finish()
    assert _same_faces(final.faces, whole.faces) and final.sampled == whole.sampled
    assert builder.ready() == len(seq)


def _i420(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)  # (H * 3 / 2, W)


def test_live_track_taps_the_render_stream(tracker: FaceTracker, frames: list[np.ndarray]) -> None:
    """LiveTrack on full-size I420 buffers (the run loop's decode): the frames pass through
    unchanged, faces come from the luma reduced to the tracking size, in full-size pixels,
    matching a tracking pass over BGR frames reduced the same way; at() waits for a face
    only until it is final, and the finished Track is the whole pass."""
    import threading

    from pipeline.faces.live import LiveTrack

    bufs = [_i420(f) for f in frames]
    live = LiveTrack(tracker, size=(media.FACE_SIZE, media.FACE_SIZE), long_side=HALF, n_track=len(bufs))
    assert live.small == (HALF, HALF)
    got: list[Face | None] = []
    consumer = threading.Thread(target=lambda: got.extend(live.at(i) for i in range(len(bufs))))
    consumer.start()
    passed = list(live.tap(iter(bufs)))
    consumer.join(10)
    assert not consumer.is_alive() and all(p is b for p, b in zip(passed, bufs)) and len(passed) == len(bufs)
    track = live.result()
    assert _same_faces(got, track.faces) and track.frames_without_face == 0 and live.seconds > 0
    reference = track_frames((_small(f) for f in frames), scale=2.0, tracker=tracker)
    for ours, theirs in zip(track.faces, reference.faces):
        assert iou(ours.box, theirs.box) > 0.9  # grey luma vs BGR: the same face, within a pixel or two
        assert np.abs(ours.landmarks - theirs.landmarks).mean() < 3.0


def test_live_track_stops_at_n_track_and_reports_failures(tracker: FaceTracker, frames: list[np.ndarray]) -> None:
    """Frames past ``n_track`` pass untracked; a decoder failure reaches a waiting render
    as itself; a stream closed early ends the wait with TrackStopped; no face anywhere is
    NoFaceFound for the render too."""
    from pipeline.faces.live import LiveTrack, TrackStopped

    bufs = [_i420(f) for f in frames]
    size = (media.FACE_SIZE, media.FACE_SIZE)
    live = LiveTrack(tracker, size=size, long_side=HALF, n_track=7)
    assert len(list(live.tap(iter(bufs)))) == len(bufs)
    assert len(live.result()) == 7 and live.at(20) is live.result().faces[6]

    def broken():
        yield from bufs[:12]
        raise OSError("decoder died")

    live = LiveTrack(tracker, size=size, long_side=HALF, n_track=len(bufs))
    with pytest.raises(OSError, match="decoder died"):
        list(live.tap(broken()))
    assert live.at(3) is not None  # final before the failure
    with pytest.raises(OSError, match="decoder died"):
        live.at(20)

    live = LiveTrack(tracker, size=size, long_side=HALF, n_track=len(bufs))
    stream = live.tap(iter(bufs))
    next(stream)
    stream.close()
    with pytest.raises(TrackStopped):
        live.at(5)

    blank = _i420(np.full_like(frames[0], 90))
    live = LiveTrack(tracker, size=size, long_side=HALF, n_track=11)
    with pytest.raises(NoFaceFound):
        list(live.tap(iter([blank] * 11)))
    with pytest.raises(NoFaceFound):
        live.at(0)


def test_face_detector_is_cached_as_a_file(tmp_path, monkeypatch, frames: list[np.ndarray]) -> None:
    """The first load writes dlib's detector to $LIPSYNC_CACHE_DIR, named by dlib's version;
    the next loads read it back and detect exactly as the built-in one; a damaged copy is
    rebuilt and rewritten; a cache folder that cannot be written still gives a detector."""
    import dlib

    from pipeline.faces.backends import frontal_face_detector

    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "cache"))
    first = frontal_face_detector()
    copy = tmp_path / "cache" / f"dlib-{dlib.__version__}-frontal_face_detector.svm"
    assert copy.is_file() and copy.stat().st_size > 10_000
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no temporary left behind
    cached = frontal_face_detector()
    grey = cv2.cvtColor(_small(frames[4]), cv2.COLOR_BGR2GRAY)
    built_in = dlib.get_frontal_face_detector().run(grey, 0, 0.0)
    for detector in (first, cached):
        rects, scores, kinds = detector.run(grey, 0, 0.0)
        assert str(rects) == str(built_in[0]) and list(scores) == list(built_in[1]) and len(rects) == 1
    copy.write_bytes(b"damaged")
    assert len(frontal_face_detector().run(grey, 0, 0.0)[0]) == 1
    assert copy.stat().st_size > 10_000  # rewritten whole
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "file"))
    assert len(frontal_face_detector().run(grey, 0, 0.0)[0]) == 1


def test_the_landmark_model_loads_on_first_fit_only() -> None:
    """A tracker made for boxes only (Wav2Lip, LatentSync) never parses dlib's 99 MB landmark
    model; the first fit, or load(), does, once."""
    from pipeline.faces.backends import DlibTracker

    fresh = DlibTracker(dlib_predictor_path())
    assert fresh._predictor is None
    frame = _small(media.face_frame(0))
    faces = fresh.detect(frame, landmarks=False)
    assert len(faces) == 1 and faces[0].landmarks is None and fresh._predictor is None
    fitted = fresh.landmarks(frame, faces[0])
    model = fresh._predictor
    assert model is not None and fitted.landmarks.shape == (68, 2)
    fresh.load()
    assert fresh._predictor is model
    other = DlibTracker(dlib_predictor_path())
    other.load()
    assert other._predictor is not None
