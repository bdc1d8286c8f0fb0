"""The app's settings, parsed from environment variables (app.py passes ``os.environ``).

Every setting is documented in the README section "The app and its API".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.device import env_number
from pipeline.media.encode import ENCODER_ENV
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

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILENAME

    @property
    def max_file_size(self) -> int:
        """Upload limit in bytes, as Gradio's ``max_file_size`` takes it."""
        return int(self.max_upload_mb * 1024 * 1024)


def _number(env: Mapping[str, str], name: str, default: float, *, cast: type = float,
            minimum: float = 1) -> float:
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
        encoder=_encoder(env),
        retention_interval_s=_number(env, "LIPSYNC_RETENTION_INTERVAL_S", DEFAULT_RETENTION_INTERVAL_S,
                                     minimum=1),
    )


def _encoder(env: Mapping[str, str]) -> str:
    from pipeline.options import ENCODERS

    name = (env.get(ENCODER_ENV) or "auto").strip().lower()
    if name not in ENCODERS:
        raise SettingsError(f"{ENCODER_ENV}={name!r}: choose one of {', '.join(ENCODERS)}")
    return name


def _executor(env: Mapping[str, str], *, in_space: bool) -> str:
    """``LIPSYNC_EXECUTOR`` when set, else ``workers`` (``threads`` on a Space or with
    ``LIPSYNC_ISOLATE=0``)."""
    from jobs.executors import EXECUTORS

    name = (env.get("LIPSYNC_EXECUTOR") or "").strip().lower()
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
