"""Score one (original, generated) pair: PSNR/SSIM, SyncNet LSE, and the sync proxy.

The generated video is decoded once (``eval.frames``): dlib landmarks are fitted in the
known face box of the landmark frames for the sync proxy, and, when SyncNet weights
resolve, every frame is decoded whole in I420 to cut the 224x224 SyncNet crops. The
original is decoded only at the sampled frames (ffmpeg's ``select``), which are compared
with the generated frames of the same index (PSNR/SSIM, ``QUALITY_SAMPLES``).
The original's faces come from the job's track (reused, no detection) or, without one,
from ``pipeline.faces.tracking.track_video`` (through ``eval.inputs``, which loads what scoring needs
besides the videos). Generated frame i shows the face of original frame plan[i]
(``source_indices``: the job's own frame plan, ``RunResult.plan``, whichever way the run
extended a short video, ``pingpong`` or ``loop``; without one, ``frame_plan(..., loop)``),
so the boxes of an extension are right too.

Without SyncNet weights every LSE field is null with the reason and the fix; a number
from random weights is never reported, and torch is not imported for it (tracking an
original without a job's track goes through pipeline.run, which does import torch).

A job hands over the original's frames at the sampled indices (``originals=``, from
``pipeline.run.run(keep=sample_frames)``), so the original is not decoded at all, and its
decoded speech (``speech=``), so the audio is not decoded again either. Without
SyncNet weights, one ffmpeg decode of the generated video pipes only the luma of the face
region of the landmark frames, scaled so the widest tracked face is at most
LANDMARK_FACE_PX wide (``eval.frames.region_frames``), writes the sampled frames whole to a
temp file and counts the frames; its proxy differs from the whole-frame path's (OpenCV's
per-crop area scaling) by about 0.01 in correlation, the quality scores not at all. The
H.264 pictures that decode reads none of and nothing predicts from are dropped before its
decoder (``pipeline.media.noref``; the scan of the packets runs on a thread from the start):
the same frames, a tenth less CPU for libx264's B-frame outputs.

Cost, monalisa_720p (426 frames), 2-core machine (bench/scoring_cost.py, 2026-12-06/07 night,
before the drops, which took 111 frames out of the decode on 2026-12-07: 0.59 against 0.62 s
wall, 1.03 against 1.12 CPU s, alternating):
about 0.51-0.67 s wall and 0.88-1.2 CPU s, both cores busy. The decode of the generated video
(one ffmpeg process: ~0.41 CPU s for the decode alone, ~0.5 with its filters and the sampled
frames it writes, 0.53-0.55 beside the rest) is the longest pole; beside it, on this thread
(~0.35 CPU s), 178 dlib fits (~1.4 ms each: the 99 MB model's leaves miss the cache, and dlib
holds the GIL), and on the quality workers (~0.1 CPU s) 10 face SSIMs, 50 PSNRs and the one
720p SSIM (~50 CPU ms). The proxy's speech measures are made while ffmpeg starts (~40 ms before
its first frame), so after the decode only its mouth measures and per-lag fits remain (~0.02
s). The generated video's probe (and the speech, when not handed over) load on threads beside
the rest. Decoding in this process instead (PyAV on a thread, as the run loop does) was
slower here: 0.70-0.92 s wall against 0.55-0.58 s in alternating runs (a prototype), its
thread starved of the GIL during the fits.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eval import frames as frames_mod
from eval import inputs, lse, quality
from eval.frames import align, generated_frames, original_samples
from eval.results import LSE_METRICS, QUALITY_METRICS, Score, Scores, nulls, versions
from eval.proxy_features import MouthFrames, mouth_patch
from eval.sync_proxy import proxy_scores
from pipeline.errors import NoFaceFound
from pipeline.faces.types import LANDMARK_FACE_PX, LANDMARK_MARGIN, Face
from pipeline.device import configure_process, quality_workers
from pipeline.faces.tracking import Track
from pipeline.media import noref
from pipeline.media.probe import MediaInfo, probe
from pipeline.media.background import in_background
from pipeline.media.yuv import YuvFrame

log = logging.getLogger(__name__)

# Frames (evenly spaced over the compared frames) each quality metric is measured on.
QUALITY_SAMPLES = {"psnr_full": 25, "ssim_full": 1, "psnr_face": 25, "ssim_face": 10}
LANDMARK_RATE_HZ = 12.5  # mouth landmarks per second of video (dlib's fit costs ~0.7-1.8 ms a frame)
# Sampled frame pairs waiting for the quality workers: up to QUEUE_BYTES of them (a 720p I420
# pair is 2.8 MB, so every sample of a 720p job; 15 pairs at 1080p), at least MIN_QUEUED.
QUEUE_BYTES = 96 * 2**20
MIN_QUEUED = 4
DEFAULT_LOOP = "pingpong"  # how the run loop extends a short video unless told (RunOptions.loop)
COLOUR = ("BGR uint8 from the decoded I420 frames of both videos (OpenCV COLOR_YUV2BGR_I420, "
          "BT.601 limited range), no other conversion")


def score_videos(original: str | os.PathLike[str], generated: str | os.PathLike[str], *,
                 audio: str | os.PathLike[str] | None = None, track: Track | None = None,
                 syncnet_checkpoint: str | os.PathLike[str] | None = None,
                 device: str = "auto", originals: Mapping[int, YuvFrame] | None = None,
                 speech: np.ndarray | None = None, source_indices: Sequence[int] | None = None,
                 loop: str = DEFAULT_LOOP, on_mouths: Callable[[MouthFrames], None] | None = None) -> Scores:
    """Every metric of ``generated`` against ``original`` (see the module doc).

    ``audio`` defaults to the generated video's own audio track; ``track`` is the
    original's face track at full-resolution coordinates (from the job), else the original
    is tracked here. ``originals`` maps frame indices to the original's frames already at hand
    (a job's ``RunResult.originals``, see :func:`sample_frames`): those are not decoded again.
    ``speech`` is ``audio`` already decoded to 16 kHz mono (a job's ``RunResult.speech``, by
    the same ``load_audio``): it is scored against instead of decoding ``audio`` again.
    ``source_indices[i]`` is the original frame that generated frame i shows (a job's
    ``RunResult.plan``); without it the original is taken as extended by ``loop``
    (``pingpong`` or ``loop``, as ``RunOptions.loop``). ``device`` runs SyncNet (``auto``:
    CUDA where available). ``on_mouths`` is called with the generated video's mouth measures
    when the proxy has them (the calibration, ``eval.calibrate``, re-reads them against
    shifted speech). Raises InvalidMedia when the videos cannot be aligned.
    """
    t0 = time.perf_counter()
    configure_process()  # OpenCV's and BLAS's threads (the proxy's fits are tiny), glibc's allocator
    audio_job, speech_fact = inputs.speech_job(speech, audio, generated)
    ginfo_job = in_background(probe, generated, name="eval-probe")
    refs_job = in_background(noref.scan, generated, name="eval-refs")  # for the region decode's skips
    oinfo, ginfo = probe(original), ginfo_job.result()
    al = align(oinfo, ginfo)
    facts: dict[str, Any] = {"alignment": al.note, "fps": al.fps, "size": list(al.size), "speech": speech_fact}
    seconds: dict[str, float] = {}

    face_reason = None
    if track is None:
        t = time.perf_counter()
        try:
            track = inputs.track_original(oinfo, al.fps)
        except NoFaceFound as exc:
            face_reason = f"no face in the original: {exc}"
        seconds["track"] = time.perf_counter() - t
    if track is not None:
        facts["frames_without_face"] = track.frames_without_face

    model, lse_reason = inputs.syncnet_or_reason(syncnet_checkpoint, device)
    landmarker, proxy_reason = inputs.landmarker_or_reason()
    if track is None:
        lse_reason = lse_reason or f"n/a ({face_reason})"
        proxy_reason = proxy_reason or f"n/a ({face_reason})"
        landmarker = model = None

    n_orig = len(track) if track is not None else _estimate_frames(oinfo, al.fps)
    n_gen_est = _estimate_frames(ginfo, al.fps)
    acc = quality.QualityAccumulator(quality.sample_plan(max(1, min(n_orig, n_gen_est)), QUALITY_SAMPLES))
    faces = frames_mod.FaceLookup(track, source_indices, loop)
    early: dict[str, np.ndarray | None] = {}  # the proxy's speech measures, made while ffmpeg starts

    def speech_rows() -> None:
        if landmarker is not None:
            early["audio"] = inputs.speech_rows_if_ready(audio_job, al.fps, n_gen_est)

    walk = _FramePass(acc=acc, faces=faces, al=al, landmarker=landmarker, n_orig=n_orig,
                      params=None if model is None else lse.crop_params(faces.boxes(n_gen_est)),
                      on_start=speech_rows, refs=refs_job)
    t = time.perf_counter()
    walk.run(oinfo, ginfo, originals, facts)
    seconds["frames"] = time.perf_counter() - t
    n_cmp = min(n_orig, walk.n_gen)
    facts.update(original_frames=n_orig, generated_frames=walk.n_gen, compared_frames=n_cmp)

    wav, audio_reason = audio_job.result()
    if wav is None:
        lse_reason = proxy_reason = "n/a (no audio to score against): " + audio_reason
    scores = _quality_scores(acc, al.note, n_cmp, face_reason)
    t = time.perf_counter()
    scores += _lse_scores(model, lse_reason, walk.crops, wav, al.fps)
    seconds["lse"] = time.perf_counter() - t
    t = time.perf_counter()
    mouths = MouthFrames(tuple(walk.opened), walk.patches, al.fps)
    if on_mouths is not None and proxy_reason is None and walk.opened:
        on_mouths(mouths)
    scores += proxy_scores(mouths, proxy_reason, wav, _landmark_note(), audio=early.get("audio"))
    seconds["proxy"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    facts["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
    return Scores(tuple(scores), versions(), facts)


@dataclass
class _FramePass:
    """One pass over the generated video: sampled frames compared with the original's (on
    worker threads), mouth landmarks fitted on the landmark frames, SyncNet crops cut."""

    acc: quality.QualityAccumulator
    faces: frames_mod.FaceLookup
    al: Any  # eval.frames.Alignment
    landmarker: Any
    n_orig: int
    params: np.ndarray | None  # SyncNet crop parameters per frame, None without SyncNet
    on_start: Callable[[], None] | None = None  # called while the generated video's decoder starts
    refs: Future[noref.Refs | None] | None = None  # the generated video's packets (pipeline.media.noref)
    opened: list[Face | None] = field(default_factory=list)  # landmarks; None between fitted frames
    patches: dict[int, np.ndarray | None] = field(default_factory=dict)  # grey mouth patches, fitted frames
    crops: list[np.ndarray] = field(default_factory=list)
    n_gen: int = 0

    def run(self, oinfo: MediaInfo, ginfo: MediaInfo, originals: Mapping[int, YuvFrame] | None,
            facts: dict[str, Any]) -> None:
        self.samples = sorted(i for i in self.acc.wanted if i < self.n_orig)
        kept = {i: originals[i] for i in self.samples if originals and i in originals}
        self.orig_iter = original_samples(oinfo, [i for i in self.samples if i not in kept])
        region = None
        if self.params is None and self.landmarker is not None and \
                frames_mod.region_decodable(ginfo, self.al, self.samples):
            region = frames_mod.landmark_region(self.faces.faces, self.al.size)
        facts["generated_decode"] = "every frame whole" if region is None else \
            f"luma of region {region[2]}x{region[3]} at ({region[0]}, {region[1]}) of the landmark frames; " \
            "sampled frames whole"
        facts["original_frames_reused"] = len(kept)
        self.waiting: dict[int, YuvFrame] = dict(kept)  # original frames at hand before their partner
        self.compared: list[Future[None]] = []
        w, h = self.al.size
        self.max_queued = max(MIN_QUEUED, QUEUE_BYTES // max(1, 3 * w * h))  # I420 pair: 2 x 1.5 B/px
        # PSNR/SSIM run on worker threads, so they fill the time this thread waits on ffmpeg's
        # pipes; scipy's filters and OpenCV release the GIL, so once the decode is done the
        # backlog runs on every core (the accumulator keys values by frame: order is free).
        with ThreadPoolExecutor(max_workers=quality_workers(), thread_name_prefix="eval-quality") as pool, \
                closing(self.orig_iter):
            self.pool = pool
            if region is None:
                self._whole(ginfo)
            else:
                self._region(ginfo, region)
                facts["generated_frames_skipped"] = self.skipped
            for job in self.compared:
                job.result()  # re-raises a failure of the worker here

    def _compare(self, i: int, g: YuvFrame) -> None:
        o = _next_sampled(self.orig_iter, self.waiting, i)
        if o is not None:
            self.compared.append(self.pool.submit(_compare, self.acc, i, o, g, self.faces.get(i)))
            if len(self.compared) > self.max_queued:
                self.compared[-self.max_queued - 1].result()  # bounds the frames held in the queue
        if i == self.samples[-1]:
            self.orig_iter.close()  # stops ffmpeg decoding the rest of the original

    def _whole(self, ginfo: MediaInfo) -> None:
        """Every generated frame decoded whole."""
        with closing(generated_frames(ginfo, self.al)) as frames:
            for i, g in enumerate(frames):
                self.n_gen = i + 1
                face = self.faces.get(i)
                if self.samples and i <= self.samples[-1] and i in self.acc.wanted:
                    self._compare(i, g)
                if self.landmarker is not None:
                    fitted = None
                    if face is not None and landmark_frame(i, self.al.fps):
                        fitted = self.landmarker.landmarks_in(g, face)
                        self.patches[i] = mouth_patch(g.planes()[0], fitted)
                    self.opened.append(fitted)
                if self.params is not None:
                    cx, cy, s = self.params[min(i, len(self.params) - 1)]
                    self.crops.append(lse.face_crop(g, cx, cy, s))

    def _region(self, ginfo: MediaInfo, region: tuple[int, int, int, int]) -> None:
        """Only the luma of the mouth region of the landmark frames, and the sampled frames whole."""
        with tempfile.TemporaryDirectory(prefix="lipsync-eval-") as tmp:
            full, count = os.path.join(tmp, "samples.yuv"), os.path.join(tmp, "count.yuv")
            whole = frames_mod.SampleFile(full, self.samples, self.al.size)
            rate = LANDMARK_RATE_HZ / self.al.fps
            fitted_at = (i for i in itertools.count() if frames_mod.rate_frame(i, rate))
            fits: dict[int, Face] = {}
            size, scale = frames_mod.fit_scale(self.faces.faces, region)
            skip = self._skip(ginfo, rate)
            with closing(frames_mod.region_frames(ginfo, region, rate, self.samples, full, count,
                                                  size=size, on_start=self.on_start, skip=skip)) as frames:
                for i, luma in zip(fitted_at, frames):
                    for j, gj in whole.ready():
                        self._compare(j, gj)  # sampled frames ffmpeg has written whole so far
                    face = self.faces.get(i)
                    if face is not None:
                        fits[i] = frames_mod.fit_in_region(self.landmarker, luma, face, region[:2], scale)
                        self.patches[i] = mouth_patch(luma.y, fits[i], region[:2], scale)
            decoded = frames_mod.counted_frames(count)
            self.n_gen = decoded if skip is None else skip.frames_from(decoded)
            self.skipped = self.n_gen - decoded  # frames not decoded (dropped before the decoder)
            for j, gj in whole.ready():
                self._compare(j, gj)  # the rest, now that ffmpeg has exited
            self.opened = [fits.get(i) for i in range(self.n_gen)]

    def _skip(self, ginfo: MediaInfo, rate: float) -> noref.Skip | None:
        """The packets the region decode drops: non-reference pictures that are neither landmark
        nor sampled frames (None where ``pipeline.media.noref`` does not apply)."""
        refs = None if self.refs is None else self.refs.result()
        wanted = set(self.samples)
        return None if refs is None else refs.skip(lambda i: i in wanted or frames_mod.rate_frame(i, rate),
                                                   fps=ginfo.video.fps)


def sample_frames(n_frames: int) -> set[int]:
    """The frame indices :func:`score_videos` compares (PSNR/SSIM) when ``n_frames`` frames are
    compared (the original's track length, for a job): a job keeps the originals of these
    (``pipeline.run.run(keep=sample_frames)``) and passes them as ``originals=``."""
    return set(quality.QualityAccumulator(quality.sample_plan(max(1, n_frames), QUALITY_SAMPLES)).wanted)


def landmark_frame(i: int, fps: float) -> bool:
    """Whether generated frame i gets landmarks: about ``LANDMARK_RATE_HZ`` frames a second,
    frame i where floor(i * LANDMARK_RATE_HZ / fps) steps up (0, 2, 4, ... at 25 fps; every 2nd
    or 3rd frame at 29.97, every 4th at 50).

    Mouth movement in speech is mostly below 6 Hz, so 12.5 fits a second keep it, and the
    proxy's offset still resolves single frames (shifted audio moves it by the shift, +-1;
    tests/test_eval_proxy.py). 8.3 a second (every 3rd frame at 25 fps) is not enough: on
    hdtf_aoc_512 one of the three phases put shifts of +3 and +5 frames 6-8 frames off.
    """
    return frames_mod.rate_frame(i, LANDMARK_RATE_HZ / fps)


def _compare(acc: quality.QualityAccumulator, i: int, frame0: YuvFrame, frame: YuvFrame,
             face: Face | None) -> None:
    """One sampled pair, on their common top-left area (both are even-sided I420 decodes).
    A frame sampled for the face metrics only is converted to BGR only in the face crop
    (``YuvFrame`` slicing: the same pixels as slicing the whole frame's conversion)."""
    box = None if face is None else face.box
    if frame0.shape == frame.shape and not any(
            i in acc.frames.get(m, ()) for m in ("psnr_full", "ssim_full")):
        acc.add(i, frame0, frame, box)
        return
    original, generated = frame0.to_bgr(), frame.to_bgr()
    h = min(original.shape[0], generated.shape[0])
    w = min(original.shape[1], generated.shape[1])
    acc.add(i, original[:h, :w], generated[:h, :w], box)


def _next_sampled(it: Iterator[tuple[int, YuvFrame]], waiting: dict[int, YuvFrame],
                  i: int) -> YuvFrame | None:
    """The original's frame i from the sampled stream (None when the stream ended first)."""
    while i not in waiting:
        try:
            j, frame = next(it)
        except StopIteration:
            return None
        waiting[j] = frame
    return waiting.pop(i)


def _estimate_frames(info: MediaInfo, fps: float) -> int:
    """Frames the container's duration promises at ``fps`` (decoders may yield a few less)."""
    if info.is_image:
        return 1
    return max(1, int(round(info.duration_s * fps)))


def _quality_scores(acc: quality.QualityAccumulator, note: str, n_cmp: int,
                    face_reason: str | None) -> list[Score]:
    means = acc.means()
    base = {"colour": COLOUR, "alignment": note, "compared_frames": n_cmp,
            "psnr": "10*log10(255^2/MSE), MSE in float64 over pixels and channels; mean of per-frame dB",
            "ssim": quality.SSIM_CONVENTION + "; mean over frames"}
    out = []
    for metric in QUALITY_METRICS:
        face = metric.endswith("_face")
        frames = acc.frames.get(metric, frozenset())
        conv = {**base, "region": quality.FACE_CROP if face else "full frame",
                "frames": f"{len(frames)} evenly spaced of the common frames (the middle of each of "
                          f"{QUALITY_SAMPLES[metric]} equal parts)", "frame_indices": sorted(frames)}
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


def _landmark_note() -> str:
    """How the proxy's landmark frames are chosen and fitted, for its convention."""
    return (f"{LANDMARK_RATE_HZ:g} generated frames a second (frame i where floor(i * "
            f"{LANDMARK_RATE_HZ:g} / fps) steps up: 0, 2, 4, ... at 25 fps) at the "
            f"compared size, fitted in the original's tracked box grown by "
            f"{LANDMARK_MARGIN:g} of its size per side, on its grey crop scaled so the "
            f"face is at most {LANDMARK_FACE_PX} px wide (FaceTracker.landmarks_in); "
            f"measures of the other frames linearly interpolated")
