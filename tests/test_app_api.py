"""The app through its API: a real ``python app.py`` server, the real gradio_client.

No stubs: the pipeline runs the weights-free ``baseline`` generator (no Wav2Lip weights can
exist here), real ffmpeg, the real dlib tracker and a real SQLite job history.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import media
from app_server import AppServer, start_app
from pipeline.media.probe import probe
from pipeline.options import MAX_BATCH_SIZE
from storage.jobs import JobStore

BASELINE = "baseline"
ONE_BATCH = json.dumps({"batch_size": MAX_BATCH_SIZE})  # one generator call per job (75 frames): its interval is exact


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> AppServer:
    srv = start_app(tmp_path_factory.mktemp("app_api"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def synthetic_run(client: Client, face_mp4: Path, speech_wav: Path) -> tuple[Any, ...]:
    """One /lipsync call on the synthetic face video and speech (shared by several tests)."""
    return client.predict(handle_file(str(face_mp4)), handle_file(str(speech_wav)), BASELINE, "{}",
                          api_name="/lipsync")


def _input_names(row: dict[str, Any]) -> list[str]:
    """The input names of a /history row. gradio_client downloads every record carrying a
    ``path`` (each input does) and puts its local copy, named like the input, in its place."""
    return sorted(Path(p).name for p in row["inputs"])


def _by_metric(scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return scores["scores"]


def test_lipsync_returns_video_side_by_side_scores_and_job(synthetic_run: tuple[Any, ...],
                                                           store: JobStore, client: Client) -> None:
    video, side_by_side, scores, job_id = synthetic_run
    info = probe(video)
    assert info.video.codec == "h264" and info.audio is not None
    assert info.duration_s == pytest.approx(3.0, abs=0.15)  # the speech is 3.0 s, the video 2.0 s
    sbs = probe(side_by_side)
    assert (sbs.video.width, sbs.video.height) == (2 * info.video.width, info.video.height)

    metrics = _by_metric(scores)
    assert metrics["psnr_full"]["value"] > 20 and 0 < metrics["ssim_full"]["value"] <= 1
    assert metrics["psnr_full"]["convention"]
    assert metrics["lse_d"]["value"] is None and "syncnet" in metrics["lse_d"]["reason"].lower()

    job = store.get(job_id)
    assert job["status"] == "succeeded" and job["source"] == "api"
    assert job["model_used"] == BASELINE and job["outputs"]["side_by_side"]
    stages = {s["stage"] for s in job["stages"]}
    assert {"probe", "audio", "track", "generate", "encode"} <= stages
    assert {s["metric"] for s in job["scores"]} >= {"psnr_full", "ssim_full", "lse_d"}

    record = client.predict(job_id, api_name="/job")
    assert record["id"] == job_id and record["status"] == "succeeded"


def test_history_filters_by_status_model_and_input_name(synthetic_run: tuple[Any, ...], client: Client,
                                                        bad_inputs: dict[str, Path], speech_wav: Path) -> None:
    """One succeeded and one failed job exist; each filter finds its own and nothing else."""
    ok_id = synthetic_run[3]
    with pytest.raises(AppError):
        client.predict(handle_file(str(bad_inputs["text"])), handle_file(str(speech_wav)), BASELINE, "{}",
                       api_name="/lipsync")
    failed = client.predict("failed", "all", "", "", "", 50, api_name="/history")
    assert failed and all(r["status"] == "failed" for r in failed), failed
    assert "notes.mp4" in [name for r in failed for name in _input_names(r)]
    assert ok_id not in [r["id"] for r in failed]
    found = client.predict("succeeded", BASELINE, "", "", "face", 50, api_name="/history")
    assert ok_id in [r["id"] for r in found]
    assert all(r["status"] == "succeeded" and r["model_used"] == BASELINE for r in found), found
    assert all(any("face" in name for name in _input_names(r)) for r in found), found
    assert client.predict("succeeded", BASELINE, "", "", "no-such-input", 50, api_name="/history") == []


def test_without_auth_anyone_can_list_jobs_and_download_videos(server: AppServer, synthetic_run: tuple[Any, ...],
                                                               face_mp4: Path) -> None:
    """What the README warns of when LIPSYNC_AUTH is unset (this server has none): a client with
    no credentials and no cookie lists every job, gets its inputs' names (gradio_client even
    downloads the inputs themselves) and downloads its result video."""
    job_id = synthetic_run[3]
    anonymous = Client(server.url, verbose=False)
    rows = anonymous.predict("all", "all", "", "", "", 0, api_name="/history")
    row = next(r for r in rows if r["id"] == job_id)
    assert _input_names(row) == ["face.mp4", "speech.wav"]
    face_copy = next(Path(p) for p in row["inputs"] if Path(p).name == "face.mp4")
    assert face_copy.read_bytes() == face_mp4.read_bytes()
    assert anonymous.predict(job_id, api_name="/job")["status"] == "succeeded"
    result = (server.data_dir / "jobs" / job_id / "result.mp4").resolve()
    with httpx.Client(base_url=server.url, timeout=30) as bare:
        assert bare.get("config").status_code == 200
        got = bare.get(f"gradio_api/file={result}")
    assert got.status_code == 200 and got.content == result.read_bytes()


def test_score_endpoint_scores_a_result_against_its_original(synthetic_run: tuple[Any, ...],
                                                             client: Client, face_mp4: Path,
                                                             speech_wav: Path) -> None:
    video = synthetic_run[0]
    scores = client.predict(handle_file(str(face_mp4)), handle_file(video), handle_file(str(speech_wav)),
                            api_name="/score")
    metrics = _by_metric(scores)
    assert metrics["ssim_full"]["value"] == pytest.approx(
        _by_metric(synthetic_run[2])["ssim_full"]["value"], abs=0.02)
    with pytest.raises(AppError, match="original video and the generated video"):
        client.predict(handle_file(str(face_mp4)), None, None, api_name="/score")


def test_lipsync_on_shared_media(client: Client, store: JobStore, shared_media: Path) -> None:
    video, side_by_side, scores, job_id = client.predict(
        handle_file(str(shared_media / "hdtf_aoc_512.mp4")), handle_file(str(shared_media / "speech_44k.mp3")),
        BASELINE, "{}", api_name="/lipsync")
    info = probe(video)
    assert info.video.width == 512 and info.duration_s == pytest.approx(4.9, abs=0.2)
    assert _by_metric(scores)["psnr_face"]["value"] is not None
    job = store.get(job_id)
    assert job["status"] == "succeeded" and job["facts"]["frames_without_face"] < 10


def _generate_interval(job: dict[str, Any]) -> tuple[float, float]:
    stage = next(s for s in job["stages"] if s["stage"] == "generate")
    start = datetime.fromisoformat(job["started_at"]).timestamp() + stage["start_offset_s"]
    return start, start + stage["seconds"]


def test_two_clients_at_once_share_the_generator_lane(server: AppServer, store: JobStore,
                                                      face_mp4: Path, speech_wav: Path) -> None:
    results: dict[int, Any] = {}

    def call(i: int) -> None:
        try:
            results[i] = Client(server.url, verbose=False).predict(
                handle_file(str(face_mp4)), handle_file(str(speech_wav)), BASELINE, ONE_BATCH,
                api_name="/lipsync")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert all(isinstance(r, tuple) for r in results.values()) and len(results) == 2, results
    jobs = [store.get(results[i][3]) for i in range(2)]
    assert all(j["status"] == "succeeded" for j in jobs)
    runs = sorted((datetime.fromisoformat(j["started_at"]).timestamp(),
                   datetime.fromisoformat(j["finished_at"]).timestamp()) for j in jobs)
    assert runs[1][0] < runs[0][1], "the two jobs did not run at the same time"
    (a0, a1), (b0, b1) = sorted(_generate_interval(j) for j in jobs)
    assert a1 <= b0 + 0.005, f"generator stages overlap: [{a0:.3f}, {a1:.3f}] and [{b0:.3f}, {b1:.3f}]"


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.mp4"
    text.write_text("this is a text file, not a video\n")
    ramp = np.tile(np.linspace(40, 200, 256, dtype=np.uint8)[None, :, None], (192, 1, 3))  # (192, 256, 3)
    no_face = media.write_video(d / "no_face.mp4", [np.roll(ramp, i, axis=1) for i in range(25)])
    empty = media.write_wav(d / "empty.wav", np.zeros(0, np.float32))
    return {"text": text, "no_face": no_face, "empty_audio": empty}


@pytest.mark.parametrize("case, error_type, words", [
    ("text", "InvalidMedia", "notes.mp4"),
    ("no_face", "NoFaceFound", "face"),
    ("empty_audio", "InvalidMedia", "empty.wav"),
])
def test_bad_inputs_are_clear_errors_and_recorded(case: str, error_type: str, words: str,
                                                  bad_inputs: dict[str, Path], client: Client,
                                                  store: JobStore, face_mp4: Path, speech_wav: Path) -> None:
    video = bad_inputs[case] if case != "empty_audio" else face_mp4
    audio = bad_inputs[case] if case == "empty_audio" else speech_wav
    before = {j["id"] for j in store.list(limit=None)}
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(video)), handle_file(str(audio)), BASELINE, "{}", api_name="/lipsync")
    message = str(info.value)
    assert error_type in message and words.lower() in message.lower()
    assert "Traceback" not in message
    new = [j for j in store.list(limit=None) if j["id"] not in before]
    assert len(new) == 1 and new[0]["status"] == "failed" and new[0]["error_type"] == error_type
    assert new[0]["error_message"]


def test_good_request_after_bad_ones_succeeds(client: Client, store: JobStore, face_png: Path,
                                              speech_wav: Path, bad_inputs: dict[str, Path]) -> None:
    with pytest.raises(AppError):
        client.predict(handle_file(str(bad_inputs["text"])), handle_file(str(speech_wav)), BASELINE, "{}",
                       api_name="/lipsync")
    video, _, _, job_id = client.predict(handle_file(str(face_png)), handle_file(str(speech_wav)),
                                         BASELINE, "{}", api_name="/lipsync")
    assert probe(video).duration_s == pytest.approx(3.0, abs=0.15)
    assert store.get(job_id)["status"] == "succeeded"


@pytest.mark.parametrize("model, options, words", [
    (BASELINE, '{"checkpoint": "/etc/passwd"}', "unknown option"),
    ("sora", "{}", "model must be one of"),
    (BASELINE, '{"batch_size": 100000}', "batch_size must be a whole number from 1 to 128"),
    (BASELINE, '{"face_index": -1}', "face_index must be a whole number from 0 to 31"),
    (BASELINE, '{"crf": 99}', "crf must be a whole number from 0 to 51"),
    (BASELINE, '{"pads": [0, 10, 0, 9999]}', "pads (right) must be a whole number from -256 to 256"),
    (BASELINE, '{"pads": [0, 10]}', "pads must be four whole numbers"),
    (BASELINE, '{"timeout_s": -5}', "timeout_s must be a number over 0"),
    (BASELINE, '{"preset": "placebo"}', "preset must be one of"),
    (BASELINE, '{"loop": "bounce"}', "loop must be one of pingpong, loop"),
    (BASELINE, '{"device": "tpu"}', "device must be auto, cpu, cuda or cuda:N"),
    (BASELINE, '{"face_index": "two"}', "face_index must be a whole number"),
    (BASELINE, '[1, 2]', "options must be a JSON object"),
])
def test_bad_options_are_rejected_before_a_job_is_recorded(model: str, options: str, words: str,
                                                            client: Client, store: JobStore,
                                                            face_mp4: Path, speech_wav: Path) -> None:
    """Every user option has a range; a value outside it is refused with the option's name
    and range, before any job is recorded."""
    before = len(store.list(limit=None))
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(face_mp4)), handle_file(str(speech_wav)), model, options,
                       api_name="/lipsync")
    message = str(info.value)
    assert "InvalidOption" in message and words in message, message
    assert len(store.list(limit=None)) == before


def test_loop_job_is_scored_through_its_own_frame_plan(client: Client, store: JobStore,
                                                        synth_dir: Path) -> None:
    """A ``loop`` job (speech longer than the video) scored by the app gives the scores of a
    scoring with explicit source indices (frame i shows original frame i % n), and not those
    of the ping-pong plan the scorer assumed before (the face moves, so the boxes differ)."""
    from eval.score import score_videos

    frames = [np.roll(media.face_frame(0), (3 * i) % 60 - 30, axis=1) for i in range(25)]
    video = media.write_video(synth_dir / "sliding_face.mp4", frames)  # 1 s; the face slides 3 px a frame
    speech = media.write_wav(synth_dir / "speech_2s.wav", media.speech_like(2.0, seed=5))
    out, _, scores, job_id = client.predict(handle_file(str(video)), handle_file(str(speech)), BASELINE,
                                            '{"loop": "loop"}', api_name="/lipsync")
    n_out = 50  # 2 s of speech at 25 fps
    assert probe(out).duration_s == pytest.approx(2.0, abs=0.1)
    explicit = score_videos(video, out, audio=speech, source_indices=np.arange(n_out) % 25)
    pingpong = score_videos(video, out, audio=speech, loop="pingpong")
    app = {k: v["value"] for k, v in scores["scores"].items()}
    mine = {m: explicit.value(m) for m in app}
    assert app == pytest.approx(mine, abs=1e-9), (app, mine)
    assert any(pingpong.value(m) != pytest.approx(v, abs=1e-9) for m, v in mine.items() if v is not None)
    assert store.get(job_id)["options"]["loop"] == "loop"


def test_cancel_a_running_job_is_recorded(server: AppServer, client: Client, store: JobStore,
                                          face_mp4: Path, synth_dir: Path) -> None:
    long_speech = media.write_wav(synth_dir / "speech_40s.wav", media.speech_like(40.0, seed=3))
    before = {j["id"] for j in store.list(limit=None)}
    job = client.submit(handle_file(str(face_mp4)), handle_file(str(long_speech)), BASELINE,
                        '{"batch_size": 8}', api_name="/lipsync")
    deadline = time.monotonic() + 60
    new: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        new = [j for j in store.list(limit=None) if j["id"] not in before]
        if new and new[0]["status"] == "running" and new[0]["started_at"]:
            break
        time.sleep(0.1)
    assert new and new[0]["status"] == "running"
    time.sleep(1.0)  # let it get into the frames
    job.cancel()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store.get(new[0]["id"])["status"] == "running":
        time.sleep(0.2)
    record = store.get(new[0]["id"])
    assert record["status"] == "cancelled", record
    assert record["error_type"] == "Cancelled"


def test_ops_endpoints(server: AppServer, synthetic_run: tuple[Any, ...]) -> None:
    def get(path: str) -> tuple[int, str]:
        with urllib.request.urlopen(server.url + path, timeout=10) as resp:  # noqa: S310
            return resp.status, resp.read().decode()

    assert get("healthz") == (200, '{"status":"ok"}')
    status, body = get("readyz")
    ready = json.loads(body)
    assert status == 200 and ready["ready"] and ready["checks"]["database"]["ok"]
    assert "dlib" in ready["checks"]["models"]["detail"]
    assert "/" not in json.dumps(ready["checks"]), ready  # no path in an unauthenticated answer
    status, text = get("metrics")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("lipsync_jobs", (("status", "succeeded"),))] >= 1
    assert samples[("lipsync_stage_seconds_bucket", (("le", "+Inf"), ("stage", "generate")))] >= 1
    assert ("lipsync_queue_waiting", (("group", "generation"),)) in samples
    assert samples[("lipsync_generation_slots", ())] >= 1
