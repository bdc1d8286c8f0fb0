"""Weights resolution: explicit path, env var, LatentSync folder, models folder, Hub cache, Hub
download (against a real local HTTP server standing in for the Hub, which no machine here can
reach) with the files that belong beside the weights, sha256 checks, and the
`python -m pipeline weights` report."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import WeightsInvalid, WeightsUnavailable
from pipeline.weights import (LATENTSYNC_DIR_ENV, LATENTSYNC_SPECS, LATENTSYNC_UNET, LATENTSYNC_VAE, LATENTSYNC_WHISPER,
                              SEARCH_ORDER, SYNCNET, WAV2LIP, WeightsSpec, file_sha256, forget_hub_failures, resolve,
                              resolve_latentsync)
from pipeline.weights_report import main_weights, weights_report

ROOT = Path(__file__).resolve().parents[1]
ENV_VARS = ("LIPSYNC_WAV2LIP_CHECKPOINT", "LIPSYNC_WAV2LIP_SHA256", "LIPSYNC_WAV2LIP_REPO",
            "LIPSYNC_WAV2LIP_FILENAME", "LIPSYNC_SYNCNET_CHECKPOINT", "HF_ENDPOINT", "HF_HOME", LATENTSYNC_DIR_ENV,
            *(s.env_path for s in LATENTSYNC_SPECS))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No settings from the machine leak in: empty models folder and Hub cache, offline."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forget_hub_failures()
    return tmp_path


def weights_file(path: Path, content: bytes = b"weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def hub_cache_file(cache: Path, spec: WeightsSpec, content: bytes) -> Path:
    """A file laid out as huggingface_hub's cache stores it (refs/main -> snapshot)."""
    repo = cache / f"models--{spec.repo_id.replace('/', '--')}"
    commit = "a" * 40
    weights_file(repo / "refs" / "main", commit.encode())
    return weights_file(repo / "snapshots" / commit / spec.repo_filename, content)


def test_explicit_path_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = weights_file(clean_env / "mine.pth", b"mine")
    weights_file(clean_env / "models" / "wav2lip_gan.pth")
    monkeypatch.setenv("LIPSYNC_WAV2LIP_CHECKPOINT", str(weights_file(clean_env / "env.pth")))
    hit = resolve(WAV2LIP, given)
    assert (hit.path, hit.source) == (str(given), "argument")
    assert hit.sha256 == hashlib.sha256(b"mine").hexdigest()


def test_env_var_before_models_folder(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = weights_file(clean_env / "env.pth")
    weights_file(clean_env / "models" / "wav2lip_gan.pth")
    monkeypatch.setenv("LIPSYNC_WAV2LIP_CHECKPOINT", str(env))
    assert (resolve(WAV2LIP).path, resolve(WAV2LIP).source) == (str(env), "env")


@pytest.mark.parametrize("how", ["argument", "env"])
def test_explicit_path_that_is_not_a_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    weights_file(clean_env / "models" / "wav2lip_gan.pth")  # never silently used instead
    missing = clean_env / "nope.pth"
    if how == "env":
        monkeypatch.setenv("LIPSYNC_WAV2LIP_CHECKPOINT", str(missing))
    with pytest.raises(WeightsUnavailable, match="nope.pth is not a file"):
        resolve(WAV2LIP, missing if how == "argument" else None)


@pytest.mark.parametrize("name", ["wav2lip_gan.pth", "wav2lip.pth"])
def test_models_folder(clean_env: Path, name: str) -> None:
    path = weights_file(clean_env / "models" / name)
    hit = resolve(WAV2LIP)
    assert (hit.path, hit.source) == (str(path), "models_dir")


def test_default_models_folder_is_cwd_models(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIPSYNC_MODELS_DIR")
    monkeypatch.chdir(clean_env)
    path = weights_file(clean_env / "models" / "syncnet_v2.model")
    assert resolve(SYNCNET).path == str(path)


def test_hub_cache_offline(clean_env: Path) -> None:
    """HF_HUB_OFFLINE=1: a file already in the Hub cache is found, nothing is requested."""
    cached = hub_cache_file(clean_env / "hub", SYNCNET, b"syncnet")
    hit = resolve(SYNCNET)
    assert (hit.path, hit.source) == (str(cached), "hub_cache")


def test_nothing_found_offline_says_where_and_how(clean_env: Path) -> None:
    with pytest.raises(WeightsUnavailable) as info:
        resolve(WAV2LIP)
    msg = str(info.value)
    for part in ("LIPSYNC_WAV2LIP_CHECKPOINT", str(clean_env / "models"), "Nekochu/Wav2Lip",
                 "skipped because HF_HUB_OFFLINE=1", "Fix:", "hf download Nekochu/Wav2Lip wav2lip_gan.pth"):
        assert part in msg


def test_repo_and_filename_are_settings(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_WAV2LIP_REPO", "someone/other")
    monkeypatch.setenv("LIPSYNC_WAV2LIP_FILENAME", "ckpt/w2l.pth")
    cached = hub_cache_file(clean_env / "hub", WAV2LIP.configured(), b"x")
    assert resolve(WAV2LIP).path == str(cached)


def test_sha256_checked(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = weights_file(clean_env / "models" / "wav2lip_gan.pth", b"abc")
    monkeypatch.setenv("LIPSYNC_WAV2LIP_SHA256", hashlib.sha256(b"abc").hexdigest().upper())
    assert resolve(WAV2LIP).path == str(path)
    monkeypatch.setenv("LIPSYNC_WAV2LIP_SHA256", "0" * 64)
    with pytest.raises(WeightsInvalid, match="expected 0000"):
        resolve(WAV2LIP)


def test_file_sha256_follows_changes(tmp_path: Path) -> None:
    path = weights_file(tmp_path / "f.bin", b"one")
    assert file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two!")  # other size: a new memo key
    assert file_sha256(path) == hashlib.sha256(b"two!").hexdigest()


# ---- the order of the search and the LatentSync folder ----------------------------------------

def test_search_order_and_sources(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A LatentSync file at every place: each place wins until its file goes, and the hit's
    source names the step; then the error lists the places in the same order."""
    spec = LATENTSYNC_WHISPER
    monkeypatch.setenv(LATENTSYNC_DIR_ENV, str(clean_env / "ls"))
    places = {"argument": weights_file(clean_env / "given.pt", b"1"), "env": weights_file(clean_env / "env.pt", b"2"),
              "latentsync_dir": weights_file(clean_env / "ls" / "whisper" / "tiny.pt", b"3"),
              "models_dir": weights_file(clean_env / "models" / "tiny.pt", b"4"),
              "hub_cache": hub_cache_file(clean_env / "hub", spec, b"5")}
    monkeypatch.setenv(spec.env_path, str(places["env"]))
    seen = []
    for source, path in places.items():
        hit = resolve(spec, places["argument"] if source == "argument" else None)
        assert hit.path == str(path) and hit.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        seen.append(hit.source)
        if source == "env":
            monkeypatch.delenv(spec.env_path)
        elif source != "argument":
            path.unlink()
    assert seen == list(SEARCH_ORDER[:-1])  # the download: test_hub_download_lands_in_the_cache
    with pytest.raises(WeightsUnavailable) as info:
        resolve(spec)
    places_tried = (r"\(1\) explicit path: none given \(argument or \$LIPSYNC_LATENTSYNC_WHISPER_CHECKPOINT\); "
                    r"\(2\) LatentSync folder: no whisper/tiny\.pt in .*/ls; \(3\) models folder: no tiny\.pt in .*; "
                    r"\(4\) Hub cache: .*; \(5\) Hub download: skipped because HF_HUB_OFFLINE=1\.")
    assert re.search(places_tried, str(info.value))


def test_other_models_skip_the_latentsync_folder(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LATENTSYNC_DIR_ENV, str(clean_env / "ls"))
    weights_file(clean_env / "ls" / "wav2lip_gan.pth")
    with pytest.raises(WeightsUnavailable) as info:
        resolve(WAV2LIP)
    assert "LatentSync folder" not in str(info.value) and "(1) explicit path" in str(info.value)


def test_resolve_latentsync_takes_a_folder(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder given replaces $LIPSYNC_LATENTSYNC_DIR as the LatentSync step; a file missing
    there is looked for in the later places, and the fix names that folder."""
    layout = {"latentsync_unet": "latentsync_unet.pt", "latentsync_whisper": "whisper/tiny.pt",
              "latentsync_vae": "vae/diffusion_pytorch_model.safetensors"}
    for root in ("env_dir", "given"):
        for name, place in layout.items():
            weights_file(clean_env / root / place, f"{root} {name}".encode())
    monkeypatch.setenv(LATENTSYNC_DIR_ENV, str(clean_env / "env_dir"))
    for folder, root in ((None, "env_dir"), (clean_env / "given", "given")):
        hits = resolve_latentsync(folder, allow_download=False)
        assert {n: (h.path, h.source) for n, h in hits.items()} == {
            n: (str(clean_env / root / p), "latentsync_dir") for n, p in layout.items()}
    (clean_env / "given" / "whisper" / "tiny.pt").unlink()
    found = weights_file(clean_env / "models" / "tiny.pt")
    assert resolve_latentsync(clean_env / "given")["latentsync_whisper"].source == "models_dir"
    found.unlink()
    fix = f"Fix: put it at {re.escape(str(clean_env / 'given'))}/whisper/tiny.pt"
    with pytest.raises(WeightsUnavailable, match=fix):
        resolve_latentsync(clean_env / "given")


def test_report_names_each_step(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LATENTSYNC_DIR_ENV, str(clean_env / "ls"))
    unet = weights_file(clean_env / "ls" / "latentsync_unet.pt")
    whisper = weights_file(clean_env / "models" / "tiny.pt")
    vae = weights_file(clean_env / "elsewhere" / "vae.safetensors")
    monkeypatch.setenv(LATENTSYNC_VAE.env_path, str(vae))
    rows = {r["name"]: r for r in weights_report()}
    assert [(rows[s.name]["where"], rows[s.name]["source"]) for s in LATENTSYNC_SPECS] == [
        (str(unet), "latentsync_dir"), (str(whisper), "models_dir"), (str(vae), "env")]
    assert rows[LATENTSYNC_UNET.name]["config"] is None
    assert rows[LATENTSYNC_VAE.name]["config"].startswith("built-in stabilityai/sd-vae-ft-mse config")


# ---- Hub download, against a local server ---------------------------------------------------

class _LocalHub(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (URL path -> bytes) the way the Hub's resolve endpoint does (commit
    and ETag headers); anything else gets 503."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def _answer(self, body: bool) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        data = self.files.get(self.path)
        if data is None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        revision = self.path.split("/")[4]  # /<owner>/<repo>/resolve/<revision>/<file>
        self.send_response(200)
        self.send_header("X-Repo-Commit", revision if re.fullmatch("[0-9a-f]{40}", revision) else "b" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_LocalHub]]:
    """A real HTTP server on 127.0.0.1 as HF_ENDPOINT, with the Hub switched online.

    huggingface_hub reads HF_HUB_OFFLINE once at import (conftest sets it to 1), so its
    constant is switched off too for this test."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    _LocalHub.files, _LocalHub.requests = {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LocalHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "3")
    try:
        yield _LocalHub
    finally:
        server.shutdown()
        server.server_close()
        forget_hub_failures()


def test_hub_download_lands_in_the_cache(local_hub: type[_LocalHub], clean_env: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"weights from the hub" * 1000
    local_hub.files["/Nekochu/Wav2Lip/resolve/main/wav2lip_gan.pth"] = content
    hit = resolve(WAV2LIP)
    assert hit.source == "hub_download" and hit.sha256 == hashlib.sha256(content).hexdigest()
    assert Path(hit.path).read_bytes() == content and Path(hit.path).is_relative_to(clean_env / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = resolve(WAV2LIP)
    assert (again.source, again.sha256) == ("hub_cache", hit.sha256)


def test_hub_failure_is_fast_and_not_retried(local_hub: type[_LocalHub]) -> None:
    with pytest.raises(WeightsUnavailable, match="Hub download from Nekochu/Wav2Lip: the Hub did not answer"):
        resolve(WAV2LIP)
    file_requests = [r for r in local_hub.requests if "/resolve/" in r]  # huggingface_hub adds its own calls
    assert file_requests == ["HEAD /Nekochu/Wav2Lip/resolve/main/wav2lip_gan.pth"]  # one try, no retries
    seen = len(local_hub.requests)
    with pytest.raises(WeightsUnavailable, match="not retried, it failed earlier in this process"):
        resolve(WAV2LIP)
    with pytest.raises(WeightsUnavailable, match="downloads not allowed"):
        resolve(SYNCNET, allow_download=False)
    assert len(local_hub.requests) == seen


VAE_HUB = "/stabilityai/sd-vae-ft-mse/resolve"


def test_vae_download_fetches_its_config(local_hub: type[_LocalHub], tmp_path: Path) -> None:
    """The VAE's weights from the Hub come with the repo's config.json, in the same snapshot of
    the cache, so the loader reads the folder as it is."""
    from fixtures_latentsync import tiny_vae

    from pipeline.generators.latentsync.vae import load_vae

    tiny_vae(tmp_path / "published")  # a config of its own: it loads only with that config
    local_hub.files[f"{VAE_HUB}/main/diffusion_pytorch_model.safetensors"] = (
        tmp_path / "published" / "diffusion_pytorch_model.safetensors").read_bytes()
    local_hub.files[f"{VAE_HUB}/{'b' * 40}/config.json"] = (tmp_path / "published" / "config.json").read_bytes()
    hit = resolve(LATENTSYNC_VAE)
    config = Path(hit.path).parent / "config.json"
    assert hit.source == "hub_download" and Path(hit.path).is_relative_to(tmp_path / "hub")
    assert config.read_bytes() == (tmp_path / "published" / "config.json").read_bytes()
    assert load_vae(hit.path).config_source == str(config)
    row = {r["name"]: r for r in weights_report()}["latentsync_vae"]
    assert (row["source"], row["config"]) == ("hub_cache", str(config))


def test_vae_download_without_config_on_the_hub(local_hub: type[_LocalHub], caplog: pytest.LogCaptureFixture) -> None:
    """No config.json on the Hub: the weights still resolve (the loader has its built-in config),
    the failure is logged and not retried."""
    local_hub.files[f"{VAE_HUB}/main/diffusion_pytorch_model.safetensors"] = b"vae weights"
    with caplog.at_level(logging.WARNING, logger="pipeline.weights"):
        hit = resolve(LATENTSYNC_VAE)
    assert hit.source == "hub_download" and not (Path(hit.path).parent / "config.json").exists()
    assert "no config.json beside" in caplog.text
    asked = [r for r in local_hub.requests if r.endswith("/config.json")]
    assert asked == [f"HEAD {VAE_HUB}/{'b' * 40}/config.json"]
    assert resolve(LATENTSYNC_VAE).source == "hub_cache"  # found in the cache; config.json not asked again
    assert [r for r in local_hub.requests if r.endswith("/config.json")] == asked
    row = {r["name"]: r for r in weights_report()}["latentsync_vae"]
    assert row["found"] and row["config"].startswith("built-in stabilityai/sd-vae-ft-mse config")


def test_vae_in_the_hub_cache_gets_its_config_from_the_same_revision(local_hub: type[_LocalHub],
                                                                    clean_env: Path) -> None:
    weights = hub_cache_file(clean_env / "hub", LATENTSYNC_VAE, b"cached weights")  # snapshot "a" * 40
    local_hub.files[f"{VAE_HUB}/{'a' * 40}/config.json"] = b'{"_class_name": "AutoencoderKL"}'
    assert resolve(LATENTSYNC_VAE, allow_download=False).source == "hub_cache"
    assert not (weights.parent / "config.json").exists()  # downloads not allowed: nothing fetched
    assert resolve(LATENTSYNC_VAE).path == str(weights)
    assert (weights.parent / "config.json").read_bytes() == b'{"_class_name": "AutoencoderKL"}'


# ---- the report ------------------------------------------------------------------------------

def test_report_rows(clean_env: Path) -> None:
    weights_file(clean_env / "models" / "syncnet_v2.model", b"s")
    rows = {r["name"]: r for r in weights_report()}
    assert list(rows) == ["wav2lip", "syncnet", "latentsync_unet", "latentsync_whisper", "latentsync_vae",
                          "insightface", "dlib"]
    assert not rows["latentsync_unet"]["found"] and "LIPSYNC_LATENTSYNC_DIR" in rows["latentsync_unet"]["fix"]
    assert rows["syncnet"]["found"] and rows["syncnet"]["source"] == "models_dir"
    assert rows["syncnet"]["sha256"] == hashlib.sha256(b"s").hexdigest()
    w = rows["wav2lip"]
    assert not w["found"] and "HF_HUB_OFFLINE=1" in w["why_not"] and "LIPSYNC_WAV2LIP_CHECKPOINT" in w["fix"]
    for name in ("insightface", "dlib"):
        r = rows[name]
        assert (r["found"] and r["where"]) or (r["why_not"] and r["fix"]), r


def test_main_weights_text_and_json(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights_file(clean_env / "models" / "wav2lip.pth")
    assert main_weights([]) == 0
    text = capsys.readouterr().out
    assert "Wav2Lip generator" in text and str(clean_env / "models" / "wav2lip.pth") in text
    assert "fix: put syncnet_v2.model in" in text
    assert main_weights(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["found"] for r in rows][:2] == [True, False]


def test_cli_weights(clean_env: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LIPSYNC_MODELS_DIR": str(clean_env / "models"),
           "HF_HUB_CACHE": str(clean_env / "hub"), "HF_HUB_OFFLINE": "1", "HOME": str(clean_env)}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "weights"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for label in ("Wav2Lip generator", "SyncNet", "InsightFace model pack", "dlib 68-point predictor"):
        assert label in proc.stdout
    assert "LIPSYNC_WAV2LIP_CHECKPOINT" in proc.stdout
