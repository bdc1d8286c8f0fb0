"""The run loop: one lip-sync job from two input files to one MP4.

Stages, in order (each timed). Decoding and encoding run in ffmpeg processes fed by background
threads (pipeline.media.background), so they overlap with generation; their stage times are the
seconds the job waited on them, not their total work:
  1. probe     read container/stream facts and validate both inputs (both probes at once)
  2. audio     decode the speech to 16 kHz mono (on a thread, while the video's frames are
               counted and the generator loads), then Wav2Lip mel, one 80x16 window per frame
               (on a thread beside tracking; not computed for a generator that reads none)
  3. track     load the face tracker; then detect and smooth faces on the render's own
               decoded frames as they stream past (pipeline.faces.live: one frame in 5
               reduced in this process, a bounded lookahead ahead of the generator; its
               time there is added to this stage; skipped by passthrough)
  4. decode    full-size frames streamed from ffmpeg
  5. generate  the generator on a batch (the only stage that holds the GPU lane)
  6. blend     feathered paste of generated patches
  7. encode    frames streamed into ffmpeg (libx264 + AAC); the encoders start with the job,
               so their start-up overlaps the audio decode and the tracking
  8. mux       ffmpeg's finish: audio interleave and the +faststart rewrite

Each job works in its own temporary folder, removed afterwards; the output is moved into
place only when complete, so a failed job never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.device import configure_process, gpu_lock, peak_rss_mb
from pipeline.errors import JobCancelled, JobTimeout, JobTooSlow
from pipeline.faces.backends import make_tracker
from pipeline.faces.live import LiveTrack
from pipeline.faces.tracking import Track
from pipeline.generators.base import ForwardFn, Generator, GeneratorJob
from pipeline.generators.registry import select_generator
from pipeline.media import audio as audio_mod
from pipeline.media.background import BackgroundWriter, Prefetch, in_background
from pipeline.media.decode import count_frames, decode_rate, frame_plan, plan_frames, read_frames
from pipeline.media.encode import FrameWriter, choose_encoder
from pipeline.media.probe import MediaInfo, probe, validate_audio_input, validate_face_input
from pipeline.media.yuv import YuvFrame, hstack, paste
from pipeline.options import RunOptions, RunResult

log = logging.getLogger(__name__)

STILL_FPS = 25.0  # a still photo becomes a video at this rate
KEEP_BUDGET_BYTES = 256 * 2**20  # at most this much of original frames kept for scoring
STREAM_DEPTH = 16  # frames read ahead of / queued behind the main thread (bounded memory)
SBS_CRF = 23  # the review video favours size over fidelity
FIRST_BATCH = 8  # the first call takes at most this many: the encoder gets frames sooner
ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]

# Share of the progress bar probe, audio and the tracker's load cover (the frames: the rest).
_P_AUDIO = 0.05


class StageClock:
    """Accumulates wall seconds per stage and the offset of each stage's first start."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.wall0 = time.time()  # t0 on the wall clock, comparable across processes
        self.seconds: dict[str, float] = {}
        self.offsets: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self.offsets.setdefault(name, start - self.t0)
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        return time.perf_counter() - self.t0


def run(
    video: str | os.PathLike[str],
    audio: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    options: RunOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    side_by_side: str | os.PathLike[str] | None = None,
    keep: Collection[int] | Callable[[int], Collection[int]] | None = None,
    forward: ForwardFn | None = None,
) -> RunResult:
    """Lip-sync ``video`` (or a still photo) to ``audio`` and write an MP4 to ``output``.

    ``side_by_side`` also writes a frame-aligned review video there: original | result, with
    the new audio. ``keep`` names output frames whose ORIGINAL (source frame i, before any
    paste) is kept in ``result.originals`` for scoring, so the scorer need not decode the
    original again; it is skipped when those frames would exceed ``KEEP_BUDGET_BYTES``. With
    ``keep``, ``result.speech`` also keeps the decoded speech (16 kHz mono) for the scorer. A
    callable ``keep`` is called with the number of source frames the output shows (the
    track's length, ``plan.max() + 1``) once that is known, and returns the indices.
    An exception leaving this function carries the partial stage timings as
    ``exc.timings = {"seconds": {...}, "offsets": {...}}`` for the job record.
    ``forward`` runs the generator's model steps (default: here; see
    ``pipeline.generators.base.ForwardFn``), e.g. on a model server shared by several jobs.
    """
    clock = StageClock()
    configure_process()
    try:
        return _run(video, audio, output, options=options or RunOptions(), progress=progress,
                    cancel=cancel, side_by_side=side_by_side, keep=keep, clock=clock, forward=forward)
    except BaseException as exc:
        exc.timings = {"seconds": dict(clock.seconds), "offsets": dict(clock.offsets)}
        raise


def _run(video: str | os.PathLike[str], audio: str | os.PathLike[str],
         output: str | os.PathLike[str], *, options: RunOptions, progress: ProgressFn | None,
         cancel: CancelFn | None, side_by_side: str | os.PathLike[str] | None,
         keep: Collection[int] | Callable[[int], Collection[int]] | None,
         clock: StageClock, forward: ForwardFn | None = None) -> RunResult:
    deadline = clock.t0 + options.timeout_s if options.timeout_s else None
    report = progress or (lambda stage, fraction: None)

    def check(stage: str, fraction: float) -> None:
        if cancel is not None and cancel():
            raise JobCancelled(f"cancelled during {stage}")
        if deadline is not None and time.perf_counter() > deadline:
            raise JobTimeout(f"ran past its time limit of {options.timeout_s:.0f} s during {stage}")
        report(stage, fraction)

    check("probe", 0.0)
    _import_ahead(options)
    with clock.stage("probe"):
        audio_probe = in_background(probe, audio, name="probe-audio")  # both ffmpeg probes at once
        vinfo = probe(video)
        validate_face_input(vinfo, options.limits)
        ainfo = audio_probe.result()
        validate_audio_input(ainfo, options.limits)

    fps = STILL_FPS if vinfo.is_image else vinfo.video.fps
    # The decoder starts now and reads ahead while the speech loads and the faces are tracked.
    decoded = Prefetch(read_frames(video, fps=decode_rate(vinfo, fps), info=vinfo, pix_fmt="yuv420p"),
                       depth=STREAM_DEPTH, name="decode")
    try:
        return _job(video, audio, output, vinfo=vinfo, ainfo=ainfo, fps=fps, decoded=decoded,
                    options=options, report=report, check=check, side_by_side=side_by_side, keep=keep,
                    clock=clock, forward=forward)
    finally:
        decoded.close()


def _job(video: str | os.PathLike[str], audio: str | os.PathLike[str], output: str | os.PathLike[str], *,
         vinfo: MediaInfo, ainfo: MediaInfo, fps: float, decoded: Iterator[np.ndarray],
         options: RunOptions, report: ProgressFn, check: Callable[[str, float], None],
         side_by_side: str | os.PathLike[str] | None,
         keep: Collection[int] | Callable[[int], Collection[int]] | None, clock: StageClock,
         forward: ForwardFn | None = None) -> RunResult:
    check("audio", 0.02)
    # The speech decodes (an ffmpeg process) while this thread starts the encoders (their
    # start-up overlaps with everything before the first frame: they need only the size,
    # the rate and the audio file), counts the video's frames and loads the generator.
    speech = in_background(_speech, audio, ainfo, clock, name="audio")
    width, height = vinfo.video.display_size
    workdir = Path(tempfile.mkdtemp(prefix="lipsync-job-", dir=options.work_dir))
    try:
        with contextlib.ExitStack() as stack:
            encoder = choose_encoder(options.encoder)
            outputs = [("out.mp4", 1, options.crf)]
            if side_by_side is not None:
                outputs.append(("side_by_side.mp4", 2, SBS_CRF))  # twice as wide: original | result
            encoders = [stack.enter_context(_encoder(workdir / name, sides, options=options, fps=fps,
                                                     size=(width, height), audio=audio, crf=crf,
                                                     encoder=encoder))
                        for name, sides, crf in outputs]
            generator, model_reason = select_generator(options)
            n_source = 1 if vinfo.is_image else max(1, count_frames(video, fps=decode_rate(vinfo, fps), info=vinfo))
            wav = speech.result()  # (N,) 16 kHz
            n_out = max(1, round(len(wav) / audio_mod.SAMPLE_RATE * fps))  # the output lasts as long as the audio
            _refuse_if_too_slow(generator, n_out, options=options, clock=clock)
            mels = in_background(_mel_windows, wav, fps, n_out, generator.needs_mels, clock, name="mels")
            if keep is None:
                wav = None  # only a scorer wants the waveform (up to 38 MB for 600 s): not held through the render
            plan = frame_plan(n_source, n_out, mode=options.loop)

            live = _live_track(generator, options, (width, height), plan, clock, check)
            if live is not None:
                decoded = live.tap(decoded)  # the faces are tracked on the render's decode as it streams by

            originals: dict[int, YuvFrame] = {}
            wanted = _kept_indices(keep, plan, n_source, (width, height))
            gen_job = _render(decoded, encoders, audio=audio, vinfo=vinfo, options=options, generator=generator,
                              track=live, mels=mels.result(), plan=plan, fps=fps, workdir=workdir, clock=clock,
                              check=check, keep=(wanted, originals), forward=forward)
            track = None
            if live is not None:
                track = live.result()
                clock.seconds["track"] += live.seconds
        for frames, target in zip(encoders, (output, side_by_side)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(frames.path, os.fspath(target))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report("done", 1.0)

    checkpoint = getattr(generator, "checkpoint_info", None)
    return RunResult(
        output_path=os.fspath(output),
        model_requested=options.model,
        model_used=generator.name,
        model_reason=model_reason,
        frames=n_out,
        fps=fps,
        duration_s=n_out / fps,
        width=width - width % 2,
        height=height - height % 2,
        frames_without_face=_frames_without_face(track, plan),
        timings=dict(clock.seconds),
        stage_offsets=dict(clock.offsets),
        total_s=clock.total(),
        peak_rss_mb=peak_rss_mb(),
        checkpoint=checkpoint() if callable(checkpoint) else None,
        generator_facts=gen_job.facts() if isinstance(gen_job, GeneratorJob) else {},
        video=vinfo.to_dict(),
        audio=ainfo.to_dict(),
        track=track,
        originals=originals,
        speech=wav,
        started_wall=clock.wall0,
        encoder=encoder,
        plan=plan,
    )


def _import_ahead(options: RunOptions) -> None:
    """Import the native modules the job needs later, on its way to the first frame, that this
    process has not imported yet: PyAV (the in-process decode; about 35 ms in a fresh process)
    and, where the job may track faces with dlib, dlib (about 16 ms). On a thread while the
    probes wait on ffmpeg, these imports cost a cold CLI job no wall time; a failed import
    fails later, where it is used. Not a daemon thread: a process that exits at once (a refused
    input) waits for it, rather than ending it inside an extension's initialisation."""
    names = ["av"] if options.model == "passthrough" or options.tracker == "insightface" else ["av", "dlib"]
    missing = [name for name in names if name not in sys.modules]
    if missing:
        threading.Thread(target=_import_all, args=(missing,), name="imports").start()


def _import_all(names: list[str]) -> None:
    for name in names:
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - the import that needs the module raises it
            log.debug("importing %s ahead failed: %s", name, exc)


def _live_track(generator: Generator, options: RunOptions, size: tuple[int, int], plan: np.ndarray,
                clock: StageClock, check: Callable[[str, float], None]) -> LiveTrack | None:
    """The job's face track (its tracker loaded), or None for a generator that needs no faces."""
    if not generator.needs_faces:
        return None
    check("track", _P_AUDIO)
    with clock.stage("track"):
        return LiveTrack(make_tracker(options.tracker), size=(size[0] - size[0] % 2, size[1] - size[1] % 2),
                         long_side=options.track_long_side, n_track=int(plan.max()) + 1,
                         face_index=options.face_index, landmarks=generator.needs_track_landmarks)


def _refuse_if_too_slow(generator: Generator, frames: int, *, options: RunOptions, clock: StageClock) -> None:
    """JobTooSlow, before any frame is generated, when the generator's estimate for the job's
    frames exceeds the time left of ``options.timeout_s``."""
    if not options.timeout_s:
        return
    estimate = generator.estimate(frames)
    left = options.timeout_s - clock.total()
    if estimate is not None and estimate.seconds > left:
        raise JobTooSlow(f"{generator.name} would take an estimated {estimate.seconds:.0f} s ({estimate.basis}), "
                         f"more than the {max(left, 0.0):.0f} s left of the job's {options.timeout_s:g} s time limit: "
                         "refused before starting; use a GPU, fewer steps, a shorter clip or a longer time limit")
    if estimate is not None:
        log.info("%s: estimated %.1f s (%s), time limit %g s", generator.name, estimate.seconds, estimate.basis,
                 options.timeout_s)


def _speech(audio: str | os.PathLike[str], info: MediaInfo, clock: StageClock) -> np.ndarray:
    """The speech at 16 kHz mono (N,)."""
    with clock.stage("audio"):
        return audio_mod.load_audio(audio, info=info)


def _mel_windows(wav: np.ndarray, fps: float, n_out: int, needed: bool, clock: StageClock) -> np.ndarray:
    """Wav2Lip's mel windows, one per output frame (n_out, 80, 16); for a generator that
    reads none (``needs_mels`` False) a zero placeholder of that shape, not computed."""
    if not needed:
        return np.broadcast_to(np.zeros((1, audio_mod.N_MELS, audio_mod.MEL_STEP), np.float32),
                               (n_out, audio_mod.N_MELS, audio_mod.MEL_STEP))
    with clock.stage("audio"):
        return audio_mod.mel_chunks(audio_mod.melspectrogram(wav), fps, n_out)


def _encoder(path: Path, sides: int, *, options: RunOptions, fps: float, size: tuple[int, int],
             audio: str | os.PathLike[str], crf: int, encoder: str) -> FrameWriter:
    """An encoder for I420 frames ``sides`` frames wide (2: the review video), with the
    whole audio: the job writes as many frames as the audio lasts (within half a frame)."""
    width, height = size[0] - size[0] % 2, size[1] - size[1] % 2  # yuv420p: even sides
    return FrameWriter(path, sides * width, height, fps, audio_path=audio, crf=crf, preset=options.preset,
                       encoder=encoder, pix_fmt="yuv420p")


def _kept_indices(keep: Collection[int] | Callable[[int], Collection[int]] | None, plan: np.ndarray,
                  n_source: int, size: tuple[int, int]) -> set[int]:
    """The output indices whose original frames the run hands back for scoring: those of
    ``keep`` (or ``keep(n_tracked)``) that show their own source frame, none over the budget."""
    if callable(keep):
        keep = keep(int(plan.max()) + 1)
    wanted = {int(i) for i in keep or () if 0 <= int(i) < min(n_source, len(plan)) and plan[int(i)] == int(i)}
    if len(wanted) * 1.5 * (size[0] + 1) * (size[1] + 1) > KEEP_BUDGET_BYTES:
        log.info("not keeping %d original frames for scoring: over the memory budget", len(wanted))
        return set()
    return wanted


def _frames_without_face(track: Track | None, plan: np.ndarray) -> int:
    if track is None:
        return 0
    return sum(1 for i in plan if track.at(i) is None)


def _render(decoded: Iterator[np.ndarray], encoders: list[FrameWriter], *, audio: str | os.PathLike[str],
            vinfo: MediaInfo, options: RunOptions, generator: Generator, track: LiveTrack | None,
            mels: np.ndarray, plan: np.ndarray, fps: float, workdir: Path, clock: StageClock,
            check: Callable[[str, float], None], keep: tuple[set[int], dict[int, YuvFrame]],
            forward: ForwardFn | None = None) -> GeneratorJob:
    """Stream frames through the generator, the blend and the encoders (the output's and,
    when there are two, the review video's); returns the generator's job (its facts)."""
    width, height = vinfo.video.display_size
    extra = {"audio": audio} if generator.needs_audio else {}  # a generator that decodes the speech its own way
    job = generator.new_job(fps=fps, width=width, height=height, **extra)
    if forward is not None:
        job.forward_fn = forward
    batch_size = options.batch_size or generator.default_batch_size
    depth = max(STREAM_DEPTH, batch_size)
    frames_iter = Prefetch(plan_frames(decoded, vinfo, plan, workdir), depth=depth, name="plan")
    try:
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(BackgroundWriter(frames, depth=depth, name=f"encode-{k}"))
                       for k, frames in enumerate(encoders)]
            _encode_all(writers, job=job, track=track, mels=mels, plan=plan, batch_size=batch_size,
                        frames_iter=frames_iter, clock=clock, check=check, keep=keep)
    finally:
        frames_iter.close()
    return job


def _encode_all(writers: list[BackgroundWriter], *, job: Any, track: LiveTrack | None, mels: np.ndarray,
                plan: np.ndarray, batch_size: int, frames_iter: Iterator[YuvFrame], clock: StageClock,
                check: Callable[[str, float], None], keep: tuple[set[int], dict[int, YuvFrame]]) -> None:
    wanted, kept = keep
    n_out = len(plan)
    main, review = writers[0], writers[1] if len(writers) > 1 else None
    starts = [0, *range(min(batch_size, FIRST_BATCH), n_out, batch_size)]
    for start, stop in zip(starts, [*starts[1:], n_out]):
        check("generate", _P_AUDIO + (0.97 - _P_AUDIO) * start / n_out)
        with clock.stage("decode"):
            batch = [next(frames_iter) for _ in range(stop - start)]  # B YuvFrames
        faces = [track.at(i) for i in plan[start:stop]] if track is not None else [None] * len(batch)
        with gpu_lock(), clock.stage("generate"):
            patches = job.process(batch, mels[start:stop], faces)
        originals = [f.copy() for f in batch] if review is not None else None
        for k in wanted.intersection(range(start, stop)):
            kept[k] = batch[k - start].copy()  # before the paste: the original frame k
        with clock.stage("blend"):
            for frame, patch in zip(batch, patches):
                if patch is not None:
                    paste(frame, patch)
        with clock.stage("encode"):
            for frame in batch:
                main.write(frame.data)
            for original, frame in zip(originals or (), batch):
                review.write(hstack(original, frame).data)
    check("mux", 0.97)
    with clock.stage("mux"):
        for writer in writers:
            writer.close()
