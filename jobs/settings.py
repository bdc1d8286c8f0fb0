"""The app's settings, parsed from environment variables (app.py passes ``os.environ``).

Every setting is documented in the README section "The app and its API".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.device import env_number
from pipeline.errors import InvalidOption
from pipeline.media.encode import encoder_from_env
from storage.db import DATA_DIR_ENV, DB_FILENAME, DEFAULT_DATA_DIR

DEFAULT_HOST = "127.0.0.1"
SPACE_HOST = "0.0.0.0"  # a Hugging Face Space must listen on every interface
DEFAULT_PORT = 7860
DEFAULT_MAX_JOBS = 2  # generation jobs in flight at once (one Gradio concurrency group)
DEFAULT_QUEUE_SIZE = 16  # events waiting in Gradio's queue before new ones are rejected
DEFAULT_MAX_UPLOAD_MB = 200.0
DEFAULT_MAX_DURATION_S = 300.0  # longest face video or speech track accepted, in seconds
DEFAULT_MAX_SIDE = 4096  # px, longest side of a face video or photo
DEFAULT_RETENTION_INTERVAL_S = 3600.0  # a long-running server applies retention hourly
DEFAULT_CACHE_HOURS = 24.0  # uploads and result copies in Gradio's cache older than this are deleted
PERSISTENT_ROOT = "/data"  # where a Space's persistent storage is mounted
PERSISTENT_ROOT_ENV = "LIPSYNC_TEST_PERSISTENT_ROOT"  # test-only: a folder standing in for /data


RAY_ADDRESS_ENV = "LIPSYNC_RAY_ADDRESS"  # set: generation runs on that Ray cluster (the "ray" executor)
RAY_FALLBACKS = ("none", "local")


class SettingsError(ValueError):
    """An environment variable holds a value the app cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_jobs: int = DEFAULT_MAX_JOBS
    queue_size: int = DEFAULT_QUEUE_SIZE
    auth: tuple[str, str] | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    max_side: int = DEFAULT_MAX_SIDE
    job_timeout_s: float | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    in_space: bool = False
    executor: str = "workers"  # where generation runs: a name of jobs.executors.EXECUTORS
    work_dir: Path | None = None  # parent of job temp folders: open_service sets one per process
    encoder: str = "auto"  # LIPSYNC_ENCODER: auto (NVENC where it works), libx264 or h264_nvenc
    retention_interval_s: float = DEFAULT_RETENTION_INTERVAL_S  # how often a server applies retention
    persistent: bool = False  # data_dir lies on persistent storage (/data on a Space)
    hf_home: Path | None = None  # HF_HOME to set when unset (weights cache on /data)
    root_path: str | None = None  # public path prefix behind a proxy (GRADIO_ROOT_PATH)
    cache_hours: float = DEFAULT_CACHE_HOURS  # Gradio's upload cache: files older are deleted
    reviewers: tuple[str, ...] = ()  # Hugging Face user names who see every job on a Space
    oauth: bool = False  # Hugging Face sign-in is configured (hf_oauth: true on a Space)

    @property
    def private_sessions(self) -> bool:
        """A public Space without a login: each browser session sees only its own jobs."""
        return self.in_space and self.auth is None

    @property
    def history_lost_at_restart(self) -> bool:
        """On a Space, the history lies on its ephemeral disk (no persistent storage)."""
        return self.in_space and not self.persistent
    ray: RaySettings | None = None  # the Ray cluster's settings when LIPSYNC_RAY_ADDRESS is set

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILENAME

    @property
    def max_file_size(self) -> int:
        """Upload limit in bytes, as Gradio's ``max_file_size`` takes it."""
        return int(self.max_upload_mb * 1024 * 1024)


def setting_number(env: Mapping[str, str], name: str, default: float, *, cast: type = float,
                   minimum: float = 1) -> float:
    """The number in ``env[name]`` (``default`` when unset); SettingsError naming a bad one."""
    return env_number(name, default, cast=cast, minimum=minimum, env=env, error=SettingsError)


def parse_auth(raw: str | None) -> tuple[str, str] | None:
    """``user:password`` -> (user, password); empty -> None (no login)."""
    raw = (raw or "").strip()
    if not raw:
        return None
    user, sep, password = raw.partition(":")
    if not sep or not user or not password:
        raise SettingsError("LIPSYNC_AUTH must look like user:password")
    return user, password


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default ``os.environ``); raises SettingsError naming a bad one.
    ``LIPSYNC_*`` settings win over Gradio's own variables (``GRADIO_SERVER_NAME``,
    ``GRADIO_SERVER_PORT``), which win over the defaults."""
    env = os.environ if env is None else env
    in_space = bool((env.get("SPACE_ID") or "").strip())
    host = ((env.get("LIPSYNC_HOST") or "").strip() or (env.get("GRADIO_SERVER_NAME") or "").strip()
            or (SPACE_HOST if in_space else DEFAULT_HOST))
    port_var = "LIPSYNC_PORT" if (env.get("LIPSYNC_PORT") or "").strip() else "GRADIO_SERVER_PORT"
    timeout = setting_number(env, "LIPSYNC_JOB_TIMEOUT_S", 0.0, minimum=0)
    data_dir, persistent, hf_home = storage_defaults(env)
    return Settings(
        host=host,
        port=int(setting_number(env, port_var, DEFAULT_PORT, cast=int)),
        max_jobs=int(setting_number(env, "LIPSYNC_MAX_JOBS", DEFAULT_MAX_JOBS, cast=int)),
        queue_size=int(setting_number(env, "LIPSYNC_QUEUE_SIZE", DEFAULT_QUEUE_SIZE, cast=int)),
        auth=parse_auth(env.get("LIPSYNC_AUTH")),
        max_upload_mb=setting_number(env, "LIPSYNC_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB, minimum=0.001),
        max_duration_s=setting_number(env, "LIPSYNC_MAX_DURATION_S", DEFAULT_MAX_DURATION_S, minimum=0.1),
        max_side=int(setting_number(env, "LIPSYNC_MAX_SIDE", DEFAULT_MAX_SIDE, cast=int, minimum=16)),
        job_timeout_s=timeout or None,
        data_dir=data_dir,
        in_space=in_space,
        executor=_executor(env, in_space=in_space),
        encoder=_encoder(env),
        retention_interval_s=setting_number(env, "LIPSYNC_RETENTION_INTERVAL_S", DEFAULT_RETENTION_INTERVAL_S,
                                     minimum=1),
        persistent=persistent,
        hf_home=hf_home,
        root_path=(env.get("GRADIO_ROOT_PATH") or "").strip() or None,
        cache_hours=setting_number(env, "LIPSYNC_CACHE_HOURS", DEFAULT_CACHE_HOURS, minimum=0.01),
        reviewers=tuple(n for n in (p.strip() for p in (env.get("LIPSYNC_REVIEWERS") or "").split(",")) if n),
        oauth=in_space and bool((env.get("OAUTH_CLIENT_ID") or "").strip()),
        ray=ray_settings_from_env(env) if (env.get(RAY_ADDRESS_ENV) or "").strip() else None,
    )


def _encoder(env: Mapping[str, str]) -> str:
    try:
        return encoder_from_env(env)
    except InvalidOption as exc:
        raise SettingsError(str(exc)) from None


def storage_defaults(env: Mapping[str, str]) -> tuple[Path, bool, Path | None]:
    """``(data_dir, on persistent storage, HF_HOME to set or None)``.

    Where ``/data`` (``$LIPSYNC_TEST_PERSISTENT_ROOT`` in tests) is a writable folder, as on
    a Space with persistent storage, the history goes to ``/data/lipsync`` and the weights
    cache to ``/data/.huggingface``, so both survive restarts. An explicit
    ``LIPSYNC_DATA_DIR`` or ``HF_HOME`` always wins (None: leave HF_HOME as it is)."""
    root = Path(env.get(PERSISTENT_ROOT_ENV) or PERSISTENT_ROOT)
    writable = root.is_dir() and os.access(root, os.W_OK | os.X_OK)
    explicit = (env.get(DATA_DIR_ENV) or "").strip()
    if explicit:
        data_dir = Path(explicit)
    else:
        data_dir = root / "lipsync" if writable else Path(DEFAULT_DATA_DIR)
    persistent = _within(data_dir, root) if root.is_dir() else False
    hf_home = root / ".huggingface" if writable and not (env.get("HF_HOME") or "").strip() else None
    return data_dir, persistent, hf_home


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _executor(env: Mapping[str, str], *, in_space: bool) -> str:
    """``LIPSYNC_EXECUTOR`` when set; else ``ray`` with ``LIPSYNC_RAY_ADDRESS``; else ``zerogpu``
    on ZeroGPU hardware (``SPACES_ZERO_GPU`` true, as the ``spaces`` package reads it); else
    ``workers`` (``threads`` on a Space or with ``LIPSYNC_ISOLATE=0``)."""
    from jobs.executors import EXECUTORS

    name = (env.get("LIPSYNC_EXECUTOR") or "").strip().lower()
    if not name and (env.get(RAY_ADDRESS_ENV) or "").strip():
        return "ray"
    if not name:
        if on_zero_gpu(env):
            return "zerogpu"
        return "workers" if _flag(env, "LIPSYNC_ISOLATE", default=not in_space) else "threads"
    if name not in EXECUTORS:
        raise SettingsError(f"LIPSYNC_EXECUTOR={name!r}: choose one of {', '.join(sorted(EXECUTORS))}")
    return name


def on_zero_gpu(env: Mapping[str, str] | None = None) -> bool:
    """Whether this runs on ZeroGPU hardware: ``SPACES_ZERO_GPU`` is 1/t/true, exactly the
    test of ``spaces.config`` (anything else leaves ``spaces.GPU`` a no-op)."""
    env = os.environ if env is None else env
    return (env.get("SPACES_ZERO_GPU") or "").strip().lower() in ("1", "t", "true")


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {env.get(name)!r}")


@dataclass(frozen=True)
class RaySettings:
    """How the ``ray`` executor reaches its cluster and sizes its Serve deployments
    (``jobs/ray_serve.py``); every field has its LIPSYNC_RAY_* variable (README, "Scale out")."""

    address: str  # "auto", "host:port" of the head's GCS, or "ray://host:10001"
    retries: int = 1  # re-runs of a job whose node was lost
    fallback: str = "none"  # "local": run jobs here when the cluster is unreachable at start
    shared_dir: Path | None = None  # a folder every node mounts: files travel as paths, not bytes
    max_ongoing: int = 2  # jobs one generation replica runs at once
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing: float = 1.0  # the autoscaler's target of ongoing jobs per replica
    gpus: float | None = None  # GPUs per replica that holds a model; None: 1 where the cluster has GPUs
    cpus: float = 1.0  # CPUs per generation replica (decode, track, blend, encode)
    batch: bool = True  # the generator's forward passes in their own batched deployment
    batch_size: int = 64  # frames per batched forward (several jobs' frames together)
    batch_wait_s: float = 0.02  # how long a batch waits to fill
    forward_replicas: int | None = None  # model copies (Forward replicas); None: one per GPU
    deploy: bool = True  # deploy the Serve application at start (False: one deployed already, e.g. KubeRay)
    app_name: str = "lipsync"
    events_dir: Path | None = None  # replicas append their job events (start, cancel clean-up) here

    @property
    def replicas(self) -> dict[str, float]:
        """Serve's ``autoscaling_config``."""
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing}


def ray_settings_from_env(env: Mapping[str, str] | None = None) -> RaySettings:
    """RaySettings from ``env`` (default ``os.environ``); SettingsError names a bad value."""
    env = os.environ if env is None else env
    address = (env.get(RAY_ADDRESS_ENV) or "").strip()
    if not address:
        raise SettingsError(f"{RAY_ADDRESS_ENV} is not set: give 'auto' or the head's address")
    fallback = (env.get("LIPSYNC_RAY_FALLBACK") or "none").strip().lower()
    if fallback not in RAY_FALLBACKS:
        raise SettingsError(f"LIPSYNC_RAY_FALLBACK={fallback!r}: choose one of {', '.join(RAY_FALLBACKS)}")
    gpus = (env.get("LIPSYNC_RAY_GPUS") or "").strip()
    lo = int(setting_number(env, "LIPSYNC_RAY_MIN_REPLICAS", 1, cast=int, minimum=0))
    hi = int(setting_number(env, "LIPSYNC_RAY_MAX_REPLICAS", max(4, lo), cast=int))
    if hi < max(lo, 1):
        raise SettingsError(f"LIPSYNC_RAY_MAX_REPLICAS={hi} is below LIPSYNC_RAY_MIN_REPLICAS={lo} (or 1)")
    shared = _path(env, "LIPSYNC_SHARED_DIR")
    if shared is not None and not shared.is_dir():  # a folder made here would be this machine's alone
        raise SettingsError(f"LIPSYNC_SHARED_DIR={os.fspath(shared)!r} is not a folder here: mount the folder "
                            "every node shares there, or unset it to send files as bytes")
    return RaySettings(
        address=address,
        retries=int(setting_number(env, "LIPSYNC_RAY_RETRIES", 1, cast=int, minimum=0)),
        fallback=fallback,
        shared_dir=shared,
        max_ongoing=int(setting_number(env, "LIPSYNC_RAY_MAX_ONGOING", 2, cast=int)),
        min_replicas=lo, max_replicas=hi,
        target_ongoing=setting_number(env, "LIPSYNC_RAY_TARGET_ONGOING", 1.0, minimum=0.01),
        gpus=setting_number(env, "LIPSYNC_RAY_GPUS", 0.0, minimum=0) if gpus else None,
        cpus=setting_number(env, "LIPSYNC_RAY_CPUS", 1.0, minimum=0),
        batch=_flag(env, "LIPSYNC_RAY_BATCH", default=True),
        batch_size=int(setting_number(env, "LIPSYNC_RAY_BATCH_SIZE", 64, cast=int)),
        batch_wait_s=setting_number(env, "LIPSYNC_RAY_BATCH_WAIT_S", 0.02, minimum=0),
        forward_replicas=int(setting_number(env, "LIPSYNC_RAY_FORWARD_REPLICAS", 0, cast=int, minimum=0)) or None,
        deploy=_flag(env, "LIPSYNC_RAY_DEPLOY", default=True),
        app_name=(env.get("LIPSYNC_RAY_APP") or "lipsync").strip(),
        events_dir=_path(env, "LIPSYNC_RAY_EVENTS_DIR"),
    )


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = (env.get(name) or "").strip()
    return Path(raw) if raw else None
