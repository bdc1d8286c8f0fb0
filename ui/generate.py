"""The Generate tab and the /lipsync and /score API endpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from pipeline.options import (DEFAULT_GUIDANCE, DEFAULT_PADS, DEFAULT_STEPS, LOOP_MODES, MAX_BATCH_SIZE,
                              MAX_FACE_INDEX, MAX_GUIDANCE, MAX_PAD, PRESETS)
from pipeline.weights import LATENTSYNC_LAYOUT
from pipeline.weights_report import latentsync_summary, weights_report
from ui import present
from ui.cancels import QueuedInputs, register_queued_inputs
from ui.context import GENERATION_GROUP, SCORING_GROUP, AppContext
from ui.errors import user_errors
from ui.privacy import viewer
from jobs.service import JobOutcome, parse_options, run_cancellable, run_job, score_files

log = logging.getLogger(__name__)

STAGE_LABELS = {
    "probe": "Checking the inputs", "audio": "Reading the speech", "track": "Tracking the face",
    "generate": "Generating the mouth (decode, generate, blend, encode)", "mux": "Muxing the audio",
    "score": "Scoring the result", "done": "Done",
    "gpu": "Waiting for a ZeroGPU window",
}


def model_choices() -> list[tuple[str, str]]:
    """Model dropdown entries, each labelled with whether its weights are available."""
    rows = weights_report(allow_download=False)
    found = {r["name"]: r["found"] for r in rows}
    w2l = "weights found" if found.get("wav2lip") else "weights missing: see the System tab"
    auto = "Wav2Lip" if found.get("wav2lip") else "baseline, since Wav2Lip weights are missing"
    ls = latentsync_summary(rows) + ("" if all(found.get(n) for n in LATENTSYNC_LAYOUT) else ": see the System tab")
    return [
        (f"auto (uses {auto})", "auto"),
        (f"wav2lip ({w2l})", "wav2lip"),
        (f"latentsync (diffusion, slow without a GPU; {ls})", "latentsync"),
        ("baseline (weights-free stand-in, always available)", "baseline"),
        ("passthrough (no change; for timing the pipeline)", "passthrough"),
    ]


def stage_progress(progress: gr.Progress) -> Callable[[str, float], None]:
    """A pipeline progress callback that names the current stage in Gradio's progress bar."""
    def report(stage: str, fraction: float) -> None:
        progress(max(0.0, min(1.0, fraction)), desc=STAGE_LABELS.get(stage, stage))
    return report


async def _run(ctx: AppContext, face: str | None, audio: str | None, model: str,
               options: dict[str, Any] | str | None, *, source: str, request: gr.Request | None,
               progress: gr.Progress, profile: gr.OAuthProfile | None = None) -> JobOutcome:
    with user_errors(f"{source} job"):
        run_options = parse_options(model, options, settings=ctx.settings)
        user = viewer(ctx, request, profile).owner  # the login name; on a public Space, the session's owner key

        def work(cancelled: Callable[[], bool]) -> JobOutcome:
            return run_job(face, audio, run_options, store=ctx.store, source=source, user=user,
                           progress=stage_progress(progress), cancel=cancelled, executor=ctx.executor)

        return await run_cancellable(work)


def build_generate_tab(ctx: AppContext) -> None:
    """Inputs, advanced options, Generate/Cancel, and the results (inside a gr.Tab)."""
    with gr.Row():
        with gr.Column():
            with gr.Tab("Face video"):
                video_in = gr.Video(label="Face video", sources=["upload", "webcam"],
                                    elem_id="face-video")
            with gr.Tab("Still photo"):
                photo_in = gr.Image(label="Face photo (used when no video is given)",
                                    type="filepath", sources=["upload", "webcam"], elem_id="face-photo")
            audio_in = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                elem_id="speech-audio")
            model_in = gr.Dropdown(model_choices(), value="auto", label="Model", elem_id="model")
            advanced = _advanced_inputs()
            latentsync = _latentsync_inputs()
            with gr.Row():
                run_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
        with gr.Column():
            with gr.Row():
                original_out = gr.Video(label="Original", interactive=False, elem_id="original-video")
                result_out = gr.Video(label="Result", interactive=False, elem_id="result-video")
            sbs_out = gr.Video(label="Side by side (original | result, new audio)", interactive=False,
                               elem_id="side-by-side-video")
            job_id_out = gr.Textbox(label="Job id", interactive=False, elem_id="job-id")
            summary_out = gr.Markdown()
            scores_out = gr.Dataframe(present.scores_table([]), label="Scores", interactive=False, wrap=True, elem_id="scores")
            with gr.Accordion("Score conventions (the pinned arguments of each score)", open=False):
                conventions_out = gr.JSON(label="Conventions")
            timing_out = gr.BarPlot(x="stage", y="seconds", label="Seconds per stage (in pipeline order)",
                                    elem_id="timings")
    if ctx.examples:
        gr.Examples([[ctx.examples["video"], None, ctx.examples["audio"]],
                     [None, ctx.examples["photo"], ctx.examples["audio"]]],
                    inputs=[video_in, photo_in, audio_in], label="Examples (made on first launch)")

    async def generate(video: str | None, photo: str | None, audio: str | None, model: str,
                       face_idx: float | None, top: float | None, bottom: float | None,
                       left: float | None, right: float | None, batch: float | None, loop_mode: str,
                       crf_value: float, preset_name: str, n_steps: float, scale: float, seed_value: float | None,
                       keep_silence: bool, request: gr.Request, profile: gr.OAuthProfile | None,
                       progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        pads = [int(p or 0) for p in (top, bottom, left, right)]
        options = {"face_index": int(face_idx or 0), "pads": pads, "loop": loop_mode,
                   "crf": int(crf_value), "preset": preset_name,
                   "batch_size": int(batch) if batch else None}
        if model == "latentsync":  # only a LatentSync job records its sampling settings
            options.update(steps=int(n_steps), guidance=float(scale), seed=int(seed_value or 0),
                           silence_keep=bool(keep_silence))
        out = await _run(ctx, video or photo, audio, model, options, source="app", request=request,
                         progress=progress, profile=profile)
        summary = present.outcome_markdown(job_id=out.job_id, model_used=out.model_used,
                                           model_reason=out.model_reason, frames=out.frames,
                                           frames_without_face=out.frames_without_face, total_s=out.total_s)
        return (video, out.video, out.side_by_side, out.job_id, summary,
                present.scores_table(out.score_rows), present.conventions(out.score_rows),
                present.timing_plot(present.timings_table(out.timings, out.offsets)))

    gen_event = run_btn.click(
        generate,
        inputs=[video_in, photo_in, audio_in, model_in, *advanced, *latentsync],
        outputs=[original_out, result_out, sbs_out, job_id_out, summary_out, scores_out, conventions_out,
                 timing_out],
        api_name="generate", api_visibility="undocumented", concurrency_id=GENERATION_GROUP,
        concurrency_limit=ctx.settings.max_jobs, trigger_mode="once")
    # a cancel while the event still waits in the queue is recorded by ui.cancels
    register_queued_inputs("generate", QueuedInputs(source="app", video=(0, 1), audio=2, model=3))
    cancel_btn.click(None, cancels=[gen_event], api_visibility="private")


def _advanced_inputs() -> list[gr.components.Component]:
    """The advanced options' inputs, in the order ``generate`` takes them: face index, the four
    pads, batch size, loop mode, CRF, preset."""
    with gr.Accordion("Advanced options", open=False):
        face_index = gr.Number(0, precision=0, minimum=0, maximum=MAX_FACE_INDEX, label="Face index (0 = largest face)")
        with gr.Row():
            pads = [gr.Number(DEFAULT_PADS[i], precision=0, minimum=-MAX_PAD, maximum=MAX_PAD, label=f"Pad {side} (px)")
                    for i, side in enumerate(("top", "bottom", "left", "right"))]
        batch_size = gr.Number(None, precision=0, minimum=1, maximum=MAX_BATCH_SIZE,
                               label="Batch size (empty = the generator's default)")
        loop = gr.Radio(list(LOOP_MODES), value="pingpong",
                        label="When the speech is longer than the video, extend it by")
        crf = gr.Slider(0, 51, value=18, step=1, label="Output quality: CRF (lower = better, bigger)")
        preset = gr.Dropdown(list(PRESETS), value="veryfast", label="Encoder speed preset")
    return [face_index, *pads, batch_size, loop, crf, preset]


def _latentsync_inputs() -> list[gr.components.Component]:
    """LatentSync's inputs, in the order ``generate`` takes them: steps, guidance, seed, silence."""
    with gr.Accordion("LatentSync options (model latentsync)", open=False):
        steps = gr.Slider(1, 100, value=DEFAULT_STEPS, step=1, label="DDIM steps",
                          elem_id="latentsync-steps")
        guidance = gr.Slider(0.0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.1,
                             label="Guidance scale (<= 1: none)", elem_id="latentsync-guidance")
        seed = gr.Number(0, precision=0, minimum=0,
                         label="Seed (the same inputs and seed give the same video)", elem_id="latentsync-seed")
        silence_keep = gr.Checkbox(True, label="Keep the source mouth in silence",
                                   elem_id="latentsync-silence-keep")
    return [steps, guidance, seed, silence_keep]


def build_api_endpoints(ctx: AppContext) -> None:
    """/lipsync and /score for gradio_client (hidden components, no UI of their own)."""
    with gr.Column(visible=False):
        api_video = gr.File(label="video", type="filepath")
        api_audio = gr.File(label="audio", type="filepath")
        api_model = gr.Textbox("auto", label="model")
        api_options = gr.Textbox("{}", label="options (JSON)")
        api_result = gr.File(label="result video")
        api_sbs = gr.File(label="side-by-side video")
        api_scores = gr.JSON(label="scores")
        api_job_id = gr.Textbox(label="job id")
        lipsync_btn = gr.Button("lipsync")

        score_original = gr.File(label="original", type="filepath")
        score_generated = gr.File(label="generated", type="filepath")
        score_audio = gr.File(label="audio (optional)", type="filepath")
        score_result = gr.JSON(label="scores")
        score_btn = gr.Button("score")

    async def lipsync(video: str | None, audio: str | None, model: str, options: str,
                      request: gr.Request, profile: gr.OAuthProfile | None,
                      progress: gr.Progress = gr.Progress()) -> tuple[str, str | None, dict[str, Any], str]:
        """Lip-sync a face video (or photo) to speech; returns the result video, the
        side-by-side review video, the scores as JSON and the job id."""
        out = await _run(ctx, video, audio, model, options, source="api", request=request,
                         progress=progress, profile=profile)
        return out.video, out.side_by_side, out.scores or {}, out.job_id

    def score(original: str | None, generated: str | None, audio: str | None) -> dict[str, Any]:
        """Scores of a generated video against its original (PSNR/SSIM, LSE-D/LSE-C, sync proxy)."""
        with user_errors("scoring"):
            return score_files(original, generated, audio, executor=ctx.executor,
                               timeout_s=ctx.settings.job_timeout_s)

    lipsync_btn.click(lipsync, inputs=[api_video, api_audio, api_model, api_options],
                      outputs=[api_result, api_sbs, api_scores, api_job_id], api_name="lipsync",
                      concurrency_id=GENERATION_GROUP, concurrency_limit=ctx.settings.max_jobs)
    register_queued_inputs("lipsync", QueuedInputs(source="api", video=(0,), audio=1, model=2, options=3))
    score_btn.click(score, inputs=[score_original, score_generated, score_audio],
                    outputs=[score_result], api_name="score", concurrency_id=SCORING_GROUP,
                    concurrency_limit=ctx.settings.max_jobs)
