"""Finding model weights: explicit path, models folder, Hugging Face Hub cache, Hub download.

Every model with downloadable weights has a :class:`WeightsSpec`; :func:`resolve` looks for
its file in this order and returns the first hit with its sha256:

  1. an explicit path: the ``explicit`` argument, else ``$LIPSYNC_<MODEL>_CHECKPOINT``
  2. the models folder: ``$LIPSYNC_MODELS_DIR`` (default ``./models``)
  3. the Hub cache (``huggingface_hub.try_to_load_from_cache``; ``$HF_HUB_CACHE`` / ``$HF_HOME``)
  4. a Hub download (``hf_hub_download``, with a progress bar); skipped when
     ``HF_HUB_OFFLINE=1``; a single metadata request bounded by ``HUB_TIMEOUT_S`` decides
     first whether the Hub answers at all, so an unreachable Hub costs seconds, not minutes,
     and a failure is remembered: it is not retried in the same process.

LatentSync 1.5 needs three files (:data:`LATENTSYNC_SPECS`); each is looked for first in the
LatentSync folder ``$LIPSYNC_LATENTSYNC_DIR`` (default ``<models folder>/latentsync``) at its
place in :data:`LATENTSYNC_LAYOUT`, then as above.

Repo, file name and expected sha256 are settings: ``$LIPSYNC_<MODEL>_REPO``,
``$LIPSYNC_<MODEL>_FILENAME``, ``$LIPSYNC_<MODEL>_SHA256``. When nothing is found,
WeightsUnavailable lists every place tried and how to fix it. ``python -m pipeline weights``
prints :func:`weights_report`.
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
from pathlib import Path
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
LATENTSYNC_VAE = WeightsSpec(  # a diffusers folder: config.json must lie beside the weights
    "latentsync_vae", "LatentSync VAE (sd-vae-ft-mse)", "diffusion_pytorch_model.safetensors",
    "stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors", "LIPSYNC_LATENTSYNC_VAE")
LATENTSYNC_SPECS = (LATENTSYNC_UNET, LATENTSYNC_WHISPER, LATENTSYNC_VAE)
LATENTSYNC_DIR_ENV = "LIPSYNC_LATENTSYNC_DIR"
LATENTSYNC_LAYOUT = {  # spec name -> place inside the LatentSync folder
    "latentsync_unet": "latentsync_unet.pt",  # an optional unet_config.json beside it overrides the 1.5 config
    "latentsync_whisper": "whisper/tiny.pt",
    "latentsync_vae": "vae/diffusion_pytorch_model.safetensors",
}
SPECS = (WAV2LIP, SYNCNET, *LATENTSYNC_SPECS)


@dataclass(frozen=True)
class ResolvedWeights:
    path: str
    source: str  # "argument", "env", "models_dir", "hub_cache" or "hub_download"
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


def fix_for(spec: WeightsSpec) -> str:
    if spec.name in LATENTSYNC_LAYOUT:
        root = latentsync_dir()
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
    """The three LatentSync files by spec name (see :data:`LATENTSYNC_LAYOUT`): from ``folder``
    (default :func:`latentsync_dir`) where present there, else by :func:`resolve`."""
    root = Path(folder) if folder is not None else latentsync_dir()
    return {s.name: resolve(s, in_latentsync_dir(s, root), allow_download=allow_download, source="latentsync_dir")
            for s in LATENTSYNC_SPECS}  # WeightsUnavailable's fix names the LatentSync folder


def in_latentsync_dir(spec: WeightsSpec, root: Path | None = None) -> Path | None:
    if spec.name not in LATENTSYNC_LAYOUT:
        return None
    path = (root if root is not None else latentsync_dir()) / LATENTSYNC_LAYOUT[spec.name]
    return path if path.is_file() else None


def search(spec: WeightsSpec, explicit: str | os.PathLike[str] | None, *, allow_download: bool,
            source: str = "argument") -> tuple[ResolvedWeights | None, list[str]]:
    """The first hit, or None and one line per place tried. An explicit path must exist."""
    tried: list[str] = []
    env_value = os.environ.get(spec.env_path)
    given, source = (explicit, source) if explicit else (env_value, "env")
    if given:
        p = Path(given).expanduser()
        if not p.is_file():
            what = "the given path" if source == "argument" else f"${spec.env_path}"
            raise WeightsUnavailable(f"{spec.label}: {what} {p} is not a file; fix the path or unset it "
                                     f"to search the models folder and the Hub")
        return _found(spec, p, source), tried
    tried.append(f"explicit path: none given (argument or ${spec.env_path})")

    folder = models_dir()
    for name in spec.local_names():
        if (folder / name).is_file():
            return _found(spec, folder / name, "models_dir"), tried
    tried.append(f"models folder: no {' or '.join(spec.local_names())} in {folder.resolve()}")

    from huggingface_hub import constants, try_to_load_from_cache

    cache = _hub_cache_dir()
    hit = try_to_load_from_cache(spec.repo_id, spec.repo_filename, cache_dir=cache)
    if isinstance(hit, str):
        return _found(spec, hit, "hub_cache"), tried
    tried.append(f"Hub cache: no {spec.repo_id}/{spec.repo_filename} in {cache or constants.HF_HUB_CACHE}")

    if hub_offline():
        tried.append("Hub download: skipped because HF_HUB_OFFLINE=1")
    elif not allow_download:
        tried.append("Hub download: not attempted here (downloads not allowed for this call)")
    elif (spec.repo_id, spec.repo_filename) in _hub_failures:
        tried.append(f"Hub download from {spec.repo_id}: not retried, it failed earlier in this process "
                     f"({_hub_failures[spec.repo_id, spec.repo_filename]}); restart to retry")
    else:
        path, why = _download(spec, cache)
        if path is not None:
            return _found(spec, path, "hub_download"), tried
        _hub_failures[spec.repo_id, spec.repo_filename] = why
        tried.append(f"Hub download from {spec.repo_id}: {why}")
    return None, tried


def _download(spec: WeightsSpec, cache: str | None) -> tuple[str | None, str]:
    """Download with huggingface_hub's progress bar; (None, why) when the Hub fails."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_TIMEOUT_S)
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it at import
    try:  # one request, no retries: is the Hub there at all?
        get_hf_file_metadata(hf_hub_url(spec.repo_id, spec.repo_filename, endpoint=endpoint), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - network, HTTP and auth errors all mean "not from here"
        return None, f"the Hub did not answer within {timeout:.0f} s or refused ({type(exc).__name__}: {exc})"
    log.warning("downloading %s weights from the Hub: %s/%s", spec.label, spec.repo_id, spec.repo_filename)
    try:
        return hf_hub_download(spec.repo_id, spec.repo_filename, cache_dir=cache, etag_timeout=timeout,
                               endpoint=endpoint), ""
    except Exception as exc:  # noqa: BLE001
        return None, f"download failed ({type(exc).__name__}: {exc})"


def resolve(spec: WeightsSpec, explicit: str | os.PathLike[str] | None = None, *,
            allow_download: bool = True, source: str = "argument") -> ResolvedWeights:
    """Find ``spec``'s weights file (see module doc). Raises WeightsUnavailable listing every
    place tried and the fix, or WeightsInvalid when the file's sha256 is not the expected one.
    ``source`` names where an ``explicit`` path came from."""
    spec = spec.configured()
    hit, tried = search(spec, explicit, allow_download=allow_download, source=source)
    if hit is not None:
        return hit
    places = "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
    raise WeightsUnavailable(f"{spec.label} weights not found. Tried: {places}. Fix: {fix_for(spec)}")


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
