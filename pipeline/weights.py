"""Finding model weights: explicit path, LatentSync folder, models folder, Hub cache, Hub download.

Every model with downloadable weights has a :class:`WeightsSpec`; :func:`search` looks for its
file in this order (:data:`SEARCH_ORDER`; a hit's ``source`` names the step that found it) and
:func:`resolve` returns the first hit with its sha256:

  1. an explicit path: the ``explicit`` argument (``argument``), else ``$LIPSYNC_<MODEL>_CHECKPOINT``
     (``env``); a path given must be a file
  2. LatentSync specs only (:data:`LATENTSYNC_SPECS`): the LatentSync folder
     (``latentsync_dir``): ``$LIPSYNC_LATENTSYNC_DIR`` (default ``<models folder>/latentsync``), or
     the folder given to :func:`resolve_latentsync`, at the file's place in :data:`LATENTSYNC_LAYOUT`
  3. the models folder (``models_dir``): ``$LIPSYNC_MODELS_DIR`` (default ``./models``)
  4. the Hub cache (``hub_cache``; ``huggingface_hub.try_to_load_from_cache``; ``$HF_HUB_CACHE`` /
     ``$HF_HOME``)
  5. a Hub download (``hub_download``; ``hf_hub_download``, with a progress bar); skipped when
     ``HF_HUB_OFFLINE=1``; a single metadata request bounded by ``HUB_TIMEOUT_S`` decides
     first whether the Hub answers at all, so an unreachable Hub costs seconds, not minutes,
     and a failure is remembered: it is not retried in the same process.

A spec's ``companions`` (the LatentSync VAE's ``config.json``: a diffusers folder) are files of
its repository that belong beside the weights: where the weights come from the Hub (steps 4 and
5) and downloads are allowed, a companion missing beside them is fetched from the same repo and
revision into the same cache. Elsewhere the loader copes without (the VAE: a built-in config).

Repo, file name and expected sha256 are settings: ``$LIPSYNC_<MODEL>_REPO``,
``$LIPSYNC_<MODEL>_FILENAME``, ``$LIPSYNC_<MODEL>_SHA256``. When nothing is found,
WeightsUnavailable lists every place tried and how to fix it. ``python -m pipeline weights``
prints :func:`pipeline.weights_report.weights_report`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Generic, TypeVar

from pipeline.errors import WeightsInvalid, WeightsUnavailable

log = logging.getLogger(__name__)

MODELS_DIR_ENV = "LIPSYNC_MODELS_DIR"
DEFAULT_MODELS_DIR = "models"  # relative to the working directory
HUB_TIMEOUT_S = 10.0  # s for the Hub's first answer; $HF_HUB_ETAG_TIMEOUT overrides
HASH_CHUNK = 8 * 1024 * 1024  # bytes read per step while hashing (8 MiB)
T = TypeVar("T")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class WeightsSpec:
    """Where one model's weights file may live. ``env_prefix`` names its settings."""

    name: str  # short id: "wav2lip"
    label: str  # for people: "Wav2Lip generator"
    filename: str  # file name in the models folder
    repo_id: str  # Hub repository
    repo_filename: str  # path of the file inside the repository
    env_prefix: str  # "LIPSYNC_WAV2LIP" -> _CHECKPOINT, _REPO, _FILENAME, _SHA256
    sha256: str | None = None  # expected digest, if known
    alt_filenames: tuple[str, ...] = ()  # also accepted in the models folder
    companions: tuple[str, ...] = ()  # repo files beside repo_filename fetched with it from the Hub

    @property
    def env_path(self) -> str:
        return f"{self.env_prefix}_CHECKPOINT"

    def configured(self) -> WeightsSpec:
        """This spec with the environment's overrides of repo, file name and sha256 applied."""
        env = os.environ
        return dataclasses.replace(
            self,
            repo_id=env.get(f"{self.env_prefix}_REPO") or self.repo_id,
            repo_filename=env.get(f"{self.env_prefix}_FILENAME") or self.repo_filename,
            sha256=(env.get(f"{self.env_prefix}_SHA256") or self.sha256 or "").strip().lower() or None,
        )

    def local_names(self) -> tuple[str, ...]:
        names = (Path(self.repo_filename).name, self.filename, *self.alt_filenames)
        return tuple(dict.fromkeys(names))  # ordered, without repeats

    def repo_path(self, companion: str) -> str:
        """Where ``companion`` lies in the repository: beside ``repo_filename``."""
        return str(PurePosixPath(self.repo_filename).parent / companion)


WAV2LIP = WeightsSpec(
    name="wav2lip", label="Wav2Lip generator", filename="wav2lip_gan.pth",
    repo_id="Nekochu/Wav2Lip", repo_filename="wav2lip_gan.pth", env_prefix="LIPSYNC_WAV2LIP",
    alt_filenames=("wav2lip.pth",),
)
SYNCNET = WeightsSpec(
    name="syncnet", label="SyncNet (LSE-D / LSE-C)", filename="syncnet_v2.model",
    repo_id="ByteDance/LatentSync-1.5", repo_filename="auxiliary/syncnet_v2.model",
    env_prefix="LIPSYNC_SYNCNET",
)
LATENTSYNC_UNET = WeightsSpec("latentsync_unet", "LatentSync 1.5 UNet", "latentsync_unet.pt",
                              "ByteDance/LatentSync-1.5", "latentsync_unet.pt", "LIPSYNC_LATENTSYNC_UNET")
LATENTSYNC_WHISPER = WeightsSpec("latentsync_whisper", "LatentSync whisper tiny", "tiny.pt",
                                 "ByteDance/LatentSync-1.5", "whisper/tiny.pt", "LIPSYNC_LATENTSYNC_WHISPER")
LATENTSYNC_VAE = WeightsSpec(  # a diffusers folder; without config.json beside it the loader uses a built-in one
    "latentsync_vae", "LatentSync VAE (sd-vae-ft-mse)", "diffusion_pytorch_model.safetensors",
    "stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors", "LIPSYNC_LATENTSYNC_VAE",
    companions=("config.json",))
LATENTSYNC_SPECS = (LATENTSYNC_UNET, LATENTSYNC_WHISPER, LATENTSYNC_VAE)
LATENTSYNC_DIR_ENV = "LIPSYNC_LATENTSYNC_DIR"
LATENTSYNC_LAYOUT = {  # spec name -> place inside the LatentSync folder
    "latentsync_unet": "latentsync_unet.pt",  # an optional unet_config.json beside it overrides the 1.5 config
    "latentsync_whisper": "whisper/tiny.pt",
    "latentsync_vae": "vae/diffusion_pytorch_model.safetensors",
}
SPECS = (WAV2LIP, SYNCNET, *LATENTSYNC_SPECS)
SEARCH_ORDER = ("argument", "env", "latentsync_dir", "models_dir", "hub_cache", "hub_download")  # a hit's source


@dataclass(frozen=True)
class ResolvedWeights:
    path: str
    source: str  # the step of the search that found it: one of SEARCH_ORDER
    sha256: str


def forget_hub_failures() -> None:
    """Let the next resolve() try the Hub again (tests; after the network came back)."""
    _hub_failures.clear()


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR).expanduser()


def hub_offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub reads the variable once, at import, and refuses every request after
    # that; the variable read now also counts (set by a test or an app after the import)
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _hub_cache_dir() -> str | None:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, read now (huggingface_hub reads them at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


_hash_lock = threading.Lock()
_hash_memo: dict[tuple[str, int, int], str] = {}
# (repo, file) -> why the Hub failed: an unreachable Hub costs its timeout once per process,
# not once per job. Local places are still searched on every call.
_hub_failures: dict[tuple[str, str], str] = {}


def file_sha256(path: str | bytes | os.PathLike[str]) -> str:
    """sha256 of a file, remembered per (real path, size, mtime) so a big file is hashed once."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_memo:
            return _hash_memo[key]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_memo[key] = digest
    return digest


def fix_for(spec: WeightsSpec, latentsync_root: Path | None = None) -> str:
    """What to do where ``spec``'s file was not found (LatentSync files: put them in the folder)."""
    if spec.name in LATENTSYNC_LAYOUT:
        root = latentsync_root if latentsync_root is not None else latentsync_dir()
        whole = (f"{spec.repo_id} --local-dir {root}/vae" if spec.name == "latentsync_vae"
                 else f"{spec.repo_id} {spec.repo_filename} --local-dir {root}")
        return (f"put it at {root}/{LATENTSYNC_LAYOUT[spec.name]} (or set ${LATENTSYNC_DIR_ENV}), or on a "
                f"machine that reaches the Hub run `hf download {whole}`")
    folder = models_dir()
    return (f"put {spec.filename} in {folder}/ (or set ${MODELS_DIR_ENV}), or set {spec.env_path}="
            f"/path/to/{spec.filename}, or on a machine that reaches the Hub run "
            f"`hf download {spec.repo_id} {spec.repo_filename} --local-dir {folder}`"
            + (f" and move it to {folder}/{spec.filename}" if "/" in spec.repo_filename else ""))


def _found(spec: WeightsSpec, path: str | os.PathLike[str], source: str) -> ResolvedWeights:
    p = os.path.abspath(os.fspath(path))
    digest = file_sha256(p)
    if spec.sha256 and digest != spec.sha256:
        raise WeightsInvalid(f"{spec.label}: {p} has sha256 {digest}, expected {spec.sha256} "
                             f"(${spec.env_prefix}_SHA256); the file is damaged or a different version")
    log.info("%s weights: %s (%s, sha256 %s)", spec.label, p, source, digest[:12])
    return ResolvedWeights(path=p, source=source, sha256=digest)


def latentsync_dir() -> Path:
    """``$LIPSYNC_LATENTSYNC_DIR``, else ``<models folder>/latentsync``."""
    return Path(os.environ.get(LATENTSYNC_DIR_ENV) or models_dir() / "latentsync").expanduser()


def resolve_latentsync(folder: str | os.PathLike[str] | None = None, *,
                       allow_download: bool = True) -> dict[str, ResolvedWeights]:
    """The three LatentSync files by spec name (see :data:`LATENTSYNC_LAYOUT`), each by
    :func:`resolve` with ``folder`` (default :func:`latentsync_dir`) as its LatentSync folder."""
    root = Path(folder) if folder is not None else None
    return {s.name: resolve(s, allow_download=allow_download, latentsync_root=root) for s in LATENTSYNC_SPECS}


def _explicit(spec: WeightsSpec, explicit: str | os.PathLike[str] | None) -> tuple[Path, str] | None:
    """Step 1: (path, "argument" or "env"), or None when no path is given. A path given must be a file."""
    given, source = (explicit, "argument") if explicit else (os.environ.get(spec.env_path), "env")
    if not given:
        return None
    p = Path(given).expanduser()
    if not p.is_file():
        what = "the given path" if source == "argument" else f"${spec.env_path}"
        raise WeightsUnavailable(f"{spec.label}: {what} {p} is not a file; fix the path or unset it "
                                 f"to search the models folder and the Hub")
    return p, source


def in_latentsync_dir(spec: WeightsSpec, root: Path | None = None) -> tuple[Path | None, str]:
    """Step 2: the file at its place in the LatentSync folder ``root`` (default :func:`latentsync_dir`);
    (None, "") for a spec that is not LatentSync's. Each step returns (hit or None, what was tried)."""
    if spec.name not in LATENTSYNC_LAYOUT:
        return None, ""
    folder = root if root is not None else latentsync_dir()
    path = folder / LATENTSYNC_LAYOUT[spec.name]
    if path.is_file():
        return path, ""
    return None, f"LatentSync folder: no {LATENTSYNC_LAYOUT[spec.name]} in {folder.resolve()}"


def _in_models_dir(spec: WeightsSpec) -> tuple[Path | None, str]:
    """Step 3: the first of the spec's local names in the models folder."""
    folder = models_dir()
    for name in spec.local_names():
        if (folder / name).is_file():
            return folder / name, ""
    return None, f"models folder: no {' or '.join(spec.local_names())} in {folder.resolve()}"


def _in_hub_cache(spec: WeightsSpec, allow_download: bool) -> tuple[str | None, str]:
    """Step 4: the file in the Hub cache (its companions fetched beside it where allowed)."""
    from huggingface_hub import constants, try_to_load_from_cache

    cache = _hub_cache_dir()
    hit = try_to_load_from_cache(spec.repo_id, spec.repo_filename, cache_dir=cache)
    if isinstance(hit, str):
        _fetch_companions(spec, hit, cache, allow_download=allow_download)
        return hit, ""
    return None, f"Hub cache: no {spec.repo_id}/{spec.repo_filename} in {cache or constants.HF_HUB_CACHE}"


def _no_download(spec: WeightsSpec, filename: str, allow_download: bool) -> str:
    """Why ``filename`` of ``spec``'s repo is not to be downloaded now (a line of the places
    tried), or "" when it may be."""
    if hub_offline():
        return "Hub download: skipped because HF_HUB_OFFLINE=1"
    if not allow_download:
        return "Hub download: not attempted here (downloads not allowed for this call)"
    if (spec.repo_id, filename) in _hub_failures:
        return (f"Hub download from {spec.repo_id}: not retried, it failed earlier in this process "
                f"({_hub_failures[spec.repo_id, filename]}); restart to retry")
    return ""


def _from_hub(spec: WeightsSpec, allow_download: bool) -> tuple[str | None, str]:
    """Step 5: a Hub download into the Hub cache, its companions with it."""
    why = _no_download(spec, spec.repo_filename, allow_download)
    if why:
        return None, why
    cache = _hub_cache_dir()
    path, why = _download(spec, spec.repo_filename, cache)
    if path is None:
        _hub_failures[spec.repo_id, spec.repo_filename] = why
        return None, f"Hub download from {spec.repo_id}: {why}"
    _fetch_companions(spec, path, cache, allow_download=allow_download)
    return path, ""


def _fetch_companions(spec: WeightsSpec, weights: str, cache: str | None, *, allow_download: bool) -> None:
    """Download each companion missing beside ``weights`` (a file of a Hub cache snapshot) from
    the same repo and revision into that snapshot; a failure is logged and remembered, never raised."""
    snapshot = Path(weights).parents[len(PurePosixPath(spec.repo_filename).parts) - 1]  # snapshots/<commit>
    for companion in spec.companions:
        if (Path(weights).parent / companion).is_file():
            continue
        filename = spec.repo_path(companion)
        why = _no_download(spec, filename, allow_download)
        if not why:
            path, why = _download(spec, filename, cache, revision=snapshot.name)
            if path is not None:
                continue
            _hub_failures[spec.repo_id, filename] = why
        log.warning("%s: no %s beside %s (%s)", spec.label, companion, weights, why)


def search(spec: WeightsSpec, explicit: str | os.PathLike[str] | None = None, *, allow_download: bool,
           latentsync_root: Path | None = None) -> tuple[ResolvedWeights | None, list[str]]:
    """The first hit of the steps in the module doc, or None and one line per place tried.
    ``latentsync_root`` replaces :func:`latentsync_dir` as the LatentSync folder (step 2)."""
    given = _explicit(spec, explicit)
    if given is not None:
        return _found(spec, *given), []
    tried = [f"explicit path: none given (argument or ${spec.env_path})"]
    steps: tuple[tuple[str, Callable[[], tuple[str | os.PathLike[str] | None, str]]], ...] = (
        ("latentsync_dir", partial(in_latentsync_dir, spec, latentsync_root)),
        ("models_dir", partial(_in_models_dir, spec)),
        ("hub_cache", partial(_in_hub_cache, spec, allow_download)),
        ("hub_download", partial(_from_hub, spec, allow_download)),
    )
    for source, step in steps:
        path, why = step()
        if path is not None:
            return _found(spec, path, source), tried
        if why:
            tried.append(why)
    return None, tried


def _download(spec: WeightsSpec, filename: str, cache: str | None, *,
              revision: str | None = None) -> tuple[str | None, str]:
    """Download ``filename`` of ``spec``'s repo with huggingface_hub's progress bar; (None, why)
    when the Hub fails."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_TIMEOUT_S)
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it at import
    try:  # one request, no retries: is the Hub there at all?
        get_hf_file_metadata(hf_hub_url(spec.repo_id, filename, revision=revision, endpoint=endpoint),
                             timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - network, HTTP and auth errors all mean "not from here"
        return None, f"the Hub did not answer within {timeout:.0f} s or refused ({type(exc).__name__}: {exc})"
    log.warning("downloading %s from the Hub: %s/%s", spec.label, spec.repo_id, filename)
    try:
        return hf_hub_download(spec.repo_id, filename, revision=revision, cache_dir=cache, etag_timeout=timeout,
                               endpoint=endpoint), ""
    except Exception as exc:  # noqa: BLE001
        return None, f"download failed ({type(exc).__name__}: {exc})"


def resolve(spec: WeightsSpec, explicit: str | os.PathLike[str] | None = None, *,
            allow_download: bool = True, latentsync_root: Path | None = None) -> ResolvedWeights:
    """Find ``spec``'s weights file (see module doc). Raises WeightsUnavailable listing every
    place tried and the fix, or WeightsInvalid when the file's sha256 is not the expected one."""
    spec = spec.configured()
    hit, tried = search(spec, explicit, allow_download=allow_download, latentsync_root=latentsync_root)
    if hit is not None:
        return hit
    places = "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
    raise WeightsUnavailable(f"{spec.label} weights not found. Tried: {places}. Fix: {fix_for(spec, latentsync_root)}")


class ModelCache(Generic[T]):
    """Loaded models by key, one per process, the ``size`` most recently used kept. A second
    caller of :meth:`get` with a key being loaded waits for that load instead of loading again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._models: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = load()
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._models)
