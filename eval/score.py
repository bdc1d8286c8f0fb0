"""Score one (original, generated) pair: PSNR/SSIM, SyncNet LSE, and the sync proxy.

One pass over the generated video (full resolution, streamed) does everything that needs
its frames: PSNR/SSIM against the original's sampled frames (decoded alone, in step),
dlib landmarks at the known face boxes for the sync proxy, and the 224x224 SyncNet crops
when SyncNet weights resolve. The original's faces come from the job's track (reused,
no detection) or, without one, from tracking the original here. Generated frame i shows
the face of original frame plan[i] (``frame_plan(..., "pingpong")``, as the run loop
extends a short video), so the boxes of a ping-pong extension are right too.

Without SyncNet weights every LSE field is null with the reason and the fix; a number
from random weights is never reported.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from eval import lse, quality
from eval.frames import align, read_selected
from eval.scores import LSE_METRICS, PROXY_METRICS, QUALITY_METRICS, Score, Scores, nulls, versions
from eval.sync_proxy import CONVENTION as PROXY_CONVENTION
from eval.sync_proxy import mouth_openings, sync_proxy
from pipeline.audio import load_audio
from pipeline.errors import InvalidMedia, NoFaceFound, WeightsInvalid, WeightsUnavailable
from pipeline.faces import Face, Track, make_tracker, track_frames
from pipeline.options import TRACK_LONG_SIDE
from pipeline.probe import MediaInfo, probe
from pipeline.video_io import frame_plan, read_frames

log = logging.getLogger(__name__)

FULL_SAMPLES = 2  # frames for full-frame PSNR/SSIM (one 720p SSIM costs 0.15-0.5 s)
FACE_SAMPLES = 25  # frames for lower-face PSNR/SSIM
LANDMARK_MARGIN = 0.25  # fraction of the box added on each side of the landmark region
PLAN_MODE = "pingpong"  # how the run loop extends a video shorter than its audio


def score_videos(original: str | os.PathLike[str], generated: str | os.PathLike[str], *,
                 audio: str | os.PathLike[str] | None = None, track: Track | None = None,
                 syncnet_checkpoint: str | os.PathLike[str] | None = None,
                 device: str = "cpu") -> Scores:
    """Every metric of ``generated`` against ``original`` (see the module doc).

    ``audio`` defaults to the generated video's own audio track; ``track`` is the
    original's face track at full-resolution coordinates (from the job), else the original
    is tracked here. Raises InvalidMedia when the videos cannot be aligned.
    """
    t0 = time.perf_counter()
    oinfo, ginfo = probe(original), probe(generated)
    al = align(oinfo, ginfo)
    facts: dict[str, Any] = {"alignment": al.note, "fps": al.fps, "size": list(al.size)}
    seconds: dict[str, float] = {}

    face_reason = None
    if track is None:
        t = time.perf_counter()
        try:
            track = _track_original(oinfo)
        except NoFaceFound as exc:
            face_reason = f"no face in the original: {exc}"
        seconds["track"] = time.perf_counter() - t
    if track is not None:
        facts["frames_without_face"] = track.frames_without_face

    wav, audio_reason = _audio(audio, generated)
    model, lse_reason = (None, "n/a (no audio to score against): " + audio_reason) if wav is None else \
        _syncnet(syncnet_checkpoint, device)
    landmarker, proxy_reason = _landmarker()
    if wav is None:
        proxy_reason = "n/a (no audio to score against): " + audio_reason
    if track is None:
        lse_reason = lse_reason or f"n/a ({face_reason})"
        proxy_reason = proxy_reason or f"n/a ({face_reason})"
        landmarker = model = None

    n_orig = len(track) if track is not None else _estimate_frames(oinfo)
    n_est = max(1, min(n_orig, _estimate_frames(ginfo)))
    acc = quality.QualityAccumulator(frozenset(quality.sample_indices(n_est, FULL_SAMPLES)),
                                     frozenset(quality.sample_indices(n_est, FACE_SAMPLES)))
    sampled = dict()  # original frames waiting for their generated partner
    orig_iter = read_selected(oinfo, sorted(acc.full_frames | acc.face_frames))
    faces = _FaceLookup(track)
    params = None if model is None else lse.crop_params(faces.boxes(_estimate_frames(ginfo)))
    w, h = al.size
    opened: list[Face | None] = []
    crops: list[np.ndarray] = []
    n_gen = 0
    t = time.perf_counter()
    frames = read_frames(generated, size=al.generated_size, fps=al.generated_fps, info=ginfo)
    try:
        for i, g in enumerate(frames):
            n_gen = i + 1
            face = faces.get(i)
            if i < n_orig and (i in acc.full_frames or i in acc.face_frames):
                o = _next_sampled(orig_iter, sampled, i)
                if o is not None:
                    acc.add(i, o[:h, :w], g[:h, :w], None if face is None else face.box)
            if landmarker is not None:
                opened.append(None if face is None else _landmarks_near(landmarker, g, face))
            if params is not None:
                cx, cy, s = params[min(i, len(params) - 1)]
                crops.append(lse.face_crop(g, cx, cy, s))
    finally:
        frames.close()
        orig_iter.close()
    seconds["frames"] = time.perf_counter() - t
    n_cmp = min(n_orig, n_gen)
    facts.update(original_frames=n_orig, generated_frames=n_gen, compared_frames=n_cmp)

    scores = _quality_scores(acc, al.note, n_cmp, face_reason)
    t = time.perf_counter()
    scores += _lse_scores(model, lse_reason, crops, wav, al.fps)
    seconds["lse"] = time.perf_counter() - t
    t = time.perf_counter()
    scores += _proxy_scores(opened, proxy_reason, wav, al.fps)
    seconds["proxy"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    facts["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
    return Scores(tuple(scores), versions(), facts)


class _FaceLookup:
    """The original's face for generated frame i (through the ping-pong plan)."""

    def __init__(self, track: Track | None) -> None:
        self.faces = [] if track is None else list(track.faces)
        self._plan = np.zeros(0, np.int64)

    def get(self, i: int) -> Face | None:
        if not self.faces:
            return None
        if i >= len(self._plan):
            self._plan = frame_plan(len(self.faces), max(2 * i + 2, len(self.faces)), PLAN_MODE)
        return self.faces[int(self._plan[i])]

    def boxes(self, n: int) -> np.ndarray:
        """(n, 4) boxes for generated frames 0..n-1; frames without a face take the nearest box."""
        rows = [self.get(i) for i in range(max(1, n))]
        have = np.array([f is not None for f in rows])
        out = np.zeros((len(rows), 4))
        idx = np.arange(len(rows))
        known = np.array([f.box for f in rows if f is not None], np.float64).reshape(-1, 4)  # (k, 4)
        for c in range(4):
            out[:, c] = np.interp(idx, idx[have], known[:, c])
        return out


def _landmarks_near(landmarker, frame: np.ndarray, face: Face) -> Face:
    """Landmarks at a known box, computed on the region around it (not the whole frame)."""
    x1, y1, x2, y2 = face.box
    mx, my = LANDMARK_MARGIN * (x2 - x1), LANDMARK_MARGIN * (y2 - y1)
    h, w = frame.shape[:2]
    c0, r0 = max(0, int(x1 - mx)), max(0, int(y1 - my))
    c1, r1 = min(w, int(x2 + mx) + 1), min(h, int(y2 + my) + 1)
    if c1 - c0 < 2 or r1 - r0 < 2:
        return face
    local = Face((x1 - c0, y1 - r0, x2 - c0, y2 - r0), None, face.score)
    found = landmarker.landmarks(frame[r0:r1, c0:c1], local)
    lm = None if found.landmarks is None else found.landmarks + np.float32([c0, r0])  # (68, 2)
    return Face(face.box, lm, face.score)


def _next_sampled(it, waiting: dict[int, np.ndarray], i: int) -> np.ndarray | None:
    """The original's frame i from the sampled stream (None when the stream ended first)."""
    while i not in waiting:
        try:
            j, frame = next(it)
        except StopIteration:
            return None
        waiting[j] = frame
    return waiting.pop(i)


def _estimate_frames(info: MediaInfo) -> int:
    if info.is_image:
        return 1
    return max(1, int(round(info.duration_s * info.video.fps)))


def _track_original(info: MediaInfo) -> Track:
    """The original's face track at full resolution (what a job would have computed)."""
    width, height = info.video.display_size
    scale = max(1.0, max(width, height) / TRACK_LONG_SIDE)
    small = (max(2, round(width / scale)), max(2, round(height / scale)))
    return track_frames(read_frames(info.path, size=small, info=info),
                        scale=(width / small[0] + height / small[1]) / 2, tracker=make_tracker("auto"))


def _audio(audio: str | os.PathLike[str] | None, generated: str | os.PathLike[str]
           ) -> tuple[np.ndarray | None, str]:
    source = audio if audio is not None else generated
    try:
        return load_audio(source), ""
    except InvalidMedia as exc:
        hint = "" if audio is not None else " (pass --audio / audio= with the speech track)"
        return None, f"{exc}{hint}"


def _syncnet(checkpoint: str | os.PathLike[str] | None, device: str):
    """(model, None) or (None, the reason LSE is n/a)."""
    from eval.syncnet import cached_syncnet, resolve_syncnet

    try:
        return cached_syncnet(resolve_syncnet(checkpoint), device=device), None
    except WeightsUnavailable as exc:
        return None, f"n/a (no SyncNet weights): {exc}"
    except WeightsInvalid as exc:
        return None, f"n/a (SyncNet weights unusable): {exc}"


def _landmarker():
    """(dlib tracker, None) or (None, the reason the proxy is n/a)."""
    try:
        return make_tracker("dlib"), None
    except WeightsUnavailable as exc:
        return None, f"n/a (no landmark model for the sync proxy): {exc}"


def _quality_scores(acc: quality.QualityAccumulator, note: str, n_cmp: int,
                    face_reason: str | None) -> list[Score]:
    means = acc.means()
    base = {"colour": "BGR uint8, no conversion", "alignment": note, "compared_frames": n_cmp,
            "psnr": "10*log10(255^2/MSE), MSE in float64 over pixels and channels; mean of per-frame dB",
            "ssim": "skimage.metrics.structural_similarity(" +
                    ", ".join(f"{k}={v!r}" for k, v in quality.SSIM_ARGS.items()) + "); mean over frames"}
    out = []
    for metric in QUALITY_METRICS:
        face = metric.endswith("_face")
        frames = acc.face_frames if face else acc.full_frames
        conv = {**base, "region": quality.FACE_CROP if face else "full frame",
                "frames": f"{len(frames)} evenly spaced of the common frames", "frame_indices": sorted(frames)}
        if face:
            conv["frames_without_face_box"] = acc.face_missing
        value = means[metric]
        if value is None:
            why = face_reason or "no sampled frame had a usable face box" if face else "no frame to compare"
            out.append(Score(metric, None, f"n/a ({why})", conv))
        else:
            out.append(Score(metric, value, None, conv))
    return out


def _lse_scores(model, reason: str | None, crops: list[np.ndarray], wav: np.ndarray | None,
                fps: float) -> list[Score]:
    conv = dict(lse.CONVENTION)
    if model is None or wav is None:
        return nulls(LSE_METRICS, reason or "n/a (SyncNet not run)", conv)
    stack = np.stack(crops) if crops else np.zeros((0, 224, 224, 3), np.uint8)  # (N, 224, 224, 3)
    idx = lse.resample_indices(len(stack), fps)
    conv["resampled"] = f"{fps:.3f} -> 25 fps, nearest frame" if len(idx) != len(stack) else "no (25 fps)"
    try:
        res = lse.evaluate(model, stack[idx], lse.to_int16(wav))
    except ValueError as exc:
        return nulls(LSE_METRICS, f"n/a ({exc})", conv)
    conv["windows"] = res.windows
    return [Score("lse_d", res.min_dist, None, conv), Score("lse_c", res.confidence, None, conv),
            Score("av_offset", float(res.offset), None, {**conv, "unit": "frames at 25 fps, + = audio leads"})]


def _proxy_scores(faces: list[Face | None], reason: str | None, wav: np.ndarray | None,
                  fps: float) -> list[Score]:
    conv = {**PROXY_CONVENTION, "fps": fps}
    if reason is not None or wav is None:
        return nulls(PROXY_METRICS, reason or "n/a (no audio)", conv)
    try:
        corr, offset, _ = sync_proxy(mouth_openings(faces), wav, fps)
    except ValueError as exc:
        return nulls(PROXY_METRICS, f"n/a ({exc})", conv)
    return [Score("sync_proxy_corr", corr, None, conv),
            Score("sync_proxy_offset", float(offset), None, {**conv, "unit": "frames, + = audio leads"})]
