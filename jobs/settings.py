"""The app's settings, parsed from environment variables (app.py passes ``os.environ``).

Every setting is documented in the README section "The app and its API".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from storage.db import DATA_DIR_ENV, DB_FILENAME, DEFAULT_DATA_DIR

DEFAULT_HOST = "127.0.0.1"
SPACE_HOST = "0.0.0.0"  # a Hugging Face Space must listen on every interface
DEFAULT_PORT = 7860
DEFAULT_MAX_JOBS = 2  # generation jobs in flight at once (one Gradio concurrency group)
DEFAULT_QUEUE_SIZE = 16  # events waiting in Gradio's queue before new ones are rejected
DEFAULT_MAX_UPLOAD_MB = 200.0
DEFAULT_MAX_DURATION_S = 300.0  # longest face video or speech track accepted, in seconds
DEFAULT_MAX_SIDE = 4096  # px, longest side of a face video or photo


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
    ray: RaySettings | None = None  # the Ray cluster's settings when LIPSYNC_RAY_ADDRESS is set

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILENAME

    @property
    def max_file_size(self) -> int:
        """Upload limit in bytes, as Gradio's ``max_file_size`` takes it."""
        return int(self.max_upload_mb * 1024 * 1024)


def _number(env: Mapping[str, str], name: str, default: float, *, cast: type = float,
            minimum: float = 1) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a {cast.__name__}") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


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
    """Settings from ``env`` (default ``os.environ``); raises SettingsError naming a bad one."""
    env = os.environ if env is None else env
    in_space = bool((env.get("SPACE_ID") or "").strip())
    host = (env.get("LIPSYNC_HOST") or "").strip() or (SPACE_HOST if in_space else DEFAULT_HOST)
    timeout = _number(env, "LIPSYNC_JOB_TIMEOUT_S", 0.0, minimum=0)
    return Settings(
        host=host,
        port=int(_number(env, "LIPSYNC_PORT", DEFAULT_PORT, cast=int)),
        max_jobs=int(_number(env, "LIPSYNC_MAX_JOBS", DEFAULT_MAX_JOBS, cast=int)),
        queue_size=int(_number(env, "LIPSYNC_QUEUE_SIZE", DEFAULT_QUEUE_SIZE, cast=int)),
        auth=parse_auth(env.get("LIPSYNC_AUTH")),
        max_upload_mb=_number(env, "LIPSYNC_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB, minimum=0.001),
        max_duration_s=_number(env, "LIPSYNC_MAX_DURATION_S", DEFAULT_MAX_DURATION_S, minimum=0.1),
        max_side=int(_number(env, "LIPSYNC_MAX_SIDE", DEFAULT_MAX_SIDE, cast=int, minimum=16)),
        job_timeout_s=timeout or None,
        data_dir=Path(env.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR),
        in_space=in_space,
        executor=_executor(env, in_space=in_space),
        ray=ray_settings_from_env(env) if (env.get(RAY_ADDRESS_ENV) or "").strip() else None,
    )


def _executor(env: Mapping[str, str], *, in_space: bool) -> str:
    """``LIPSYNC_EXECUTOR`` when set, else ``ray`` with ``LIPSYNC_RAY_ADDRESS``, else ``workers``
    (``threads`` on a Space or with ``LIPSYNC_ISOLATE=0``)."""
    from jobs.executors import EXECUTORS

    name = (env.get("LIPSYNC_EXECUTOR") or "").strip().lower()
    if not name and (env.get(RAY_ADDRESS_ENV) or "").strip():
        return "ray"
    if not name:
        return "workers" if _flag(env, "LIPSYNC_ISOLATE", default=not in_space) else "threads"
    if name not in EXECUTORS:
        raise SettingsError(f"LIPSYNC_EXECUTOR={name!r}: choose one of {', '.join(sorted(EXECUTORS))}")
    return name


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
    lo = int(_number(env, "LIPSYNC_RAY_MIN_REPLICAS", 1, cast=int, minimum=0))
    hi = int(_number(env, "LIPSYNC_RAY_MAX_REPLICAS", max(4, lo), cast=int))
    if hi < max(lo, 1):
        raise SettingsError(f"LIPSYNC_RAY_MAX_REPLICAS={hi} is below LIPSYNC_RAY_MIN_REPLICAS={lo} (or 1)")
    return RaySettings(
        address=address,
        retries=int(_number(env, "LIPSYNC_RAY_RETRIES", 1, cast=int, minimum=0)),
        fallback=fallback,
        shared_dir=_path(env, "LIPSYNC_SHARED_DIR"),
        max_ongoing=int(_number(env, "LIPSYNC_RAY_MAX_ONGOING", 2, cast=int)),
        min_replicas=lo, max_replicas=hi,
        target_ongoing=_number(env, "LIPSYNC_RAY_TARGET_ONGOING", 1.0, minimum=0.01),
        gpus=_number(env, "LIPSYNC_RAY_GPUS", 0.0, minimum=0) if gpus else None,
        cpus=_number(env, "LIPSYNC_RAY_CPUS", 1.0, minimum=0),
        batch=_flag(env, "LIPSYNC_RAY_BATCH", default=True),
        batch_size=int(_number(env, "LIPSYNC_RAY_BATCH_SIZE", 64, cast=int)),
        batch_wait_s=_number(env, "LIPSYNC_RAY_BATCH_WAIT_S", 0.02, minimum=0),
        forward_replicas=int(_number(env, "LIPSYNC_RAY_FORWARD_REPLICAS", 0, cast=int, minimum=0)) or None,
        deploy=_flag(env, "LIPSYNC_RAY_DEPLOY", default=True),
        app_name=(env.get("LIPSYNC_RAY_APP") or "lipsync").strip(),
        events_dir=_path(env, "LIPSYNC_RAY_EVENTS_DIR"),
    )


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = (env.get(name) or "").strip()
    return Path(raw) if raw else None
