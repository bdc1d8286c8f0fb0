"""What travels between the app and a Ray replica: a job's files and options, and the reply.

No shared filesystem is assumed: a :class:`FileBlob` carries a file's bytes through the
Serve call (Ray moves them through its object store), with the sha256 both sides check.
With ``LIPSYNC_SHARED_DIR`` (a folder every node mounts) a blob carries a path under it
instead, and each job gets a folder of its own there (``job-<random>/``, the app's): the
copies of its inputs that were not under the shared folder already (``video/``, ``audio/``)
and each attempt's reply files (``out-<attempt>/``, the replica's). The app removes that
folder when the job ends (its replies saved, failed, cancelled) and an attempt's replies when
it re-runs the job elsewhere; a replica removes its attempt's replies when its call fails or
is cancelled. An input that already lay under the shared folder is the user's: it is read
in place and never removed. Nothing here imports Ray: the app packs and unpacks, the replica
(``jobs.ray_serve``) materialises and replies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import LipSyncError
from pipeline.options import RunOptions, RunResult
from pipeline.weights import HASH_CHUNK, file_sha256

log = logging.getLogger(__name__)

JOB_FOLDER = "job-"  # prefix of a job's own folder under the shared folder (then 12 hex digits)
STALE_JOB_S = 24 * 3600.0  # a job folder untouched this long outlived its app (which died mid-job)


class TransferCorrupt(LipSyncError):
    """A file arrived with other bytes than were sent (its sha256 differs)."""


def copy_hashing(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> tuple[str, int]:
    """Copy ``source`` to ``target`` in one pass; the sha256 and size of the bytes copied."""
    h, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(HASH_CHUNK):
            h.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _corrupt(name: str, got: str, sent: str) -> TransferCorrupt:
    return TransferCorrupt(f"{name} arrived corrupted: sha256 {got[:12]} != sent {sent[:12]}")


def sweep_stale_jobs(shared_dir: str | os.PathLike[str], *, older_than_s: float = STALE_JOB_S,
                     now: float | None = None) -> list[str]:
    """Remove the job folders under ``shared_dir`` that nothing has written to for
    ``older_than_s`` seconds: those of an app that died mid-job (a job that ends removes its
    own). Several apps may share the folder, so a younger one, maybe another app's running
    job, stays; anything that is not a job folder stays. Returns the names removed."""
    now = time.time() if now is None else now
    removed = []
    for folder in sorted(Path(shared_dir).glob(f"{JOB_FOLDER}*")):
        try:
            newest = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.rglob("*"))])
        except OSError:  # removed meanwhile (its job ended)
            continue
        if folder.is_dir() and now - newest > older_than_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        log.warning("removed %d stale job folder(s) from the shared folder %s: %s", len(removed),
                    shared_dir, ", ".join(removed))
    return removed


@dataclass(frozen=True)
class FileBlob:
    """One file in transit: its name (the suffix tells ffmpeg's demuxer), its sha256, and
    either its bytes or a path on a filesystem every node mounts."""

    name: str
    sha256: str
    size: int
    data: bytes | None = field(default=None, repr=False)
    path: str | None = None

    @classmethod
    def of(cls, path: str | os.PathLike[str], *, shared_dir: str | os.PathLike[str] | None = None,
           folder: str | os.PathLike[str] | None = None, name: str | None = None) -> FileBlob:
        """``path`` as bytes; or (``shared_dir``) as a path under the shared folder: ``path``
        itself when it lies there already, else a copy in ``folder`` (a job's own folder
        under it, made here; whoever made it removes it)."""
        path = Path(path)
        name = name or path.name
        if shared_dir is None:
            data = path.read_bytes()
            return cls(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data), data=data)
        if Path(shared_dir).resolve() in path.resolve().parents:  # the user's file: read in place
            return cls(name=name, sha256=file_sha256(path), size=path.stat().st_size, path=os.fspath(path))
        if folder is None:
            raise ValueError(f"{path} is not under the shared folder {shared_dir}: a copy needs the job's folder")
        return cls.copy_in(path, folder, name=name)

    @classmethod
    def copy_in(cls, path: str | os.PathLike[str], folder: str | os.PathLike[str], *,
                name: str | None = None) -> FileBlob:
        """A copy of ``path`` in ``folder`` (made here, but not its parents: a job's folder
        that is gone stays gone), carried as its path; hashed as it is copied."""
        target = Path(folder) / (name or Path(path).name)
        target.parent.mkdir(exist_ok=True)
        sha256, size = copy_hashing(path, target)
        return cls(name=target.name, sha256=sha256, size=size, path=os.fspath(target))

    def save(self, target: str | os.PathLike[str]) -> Path:
        """Write (or copy, from a shared path) the file to ``target``, hashing what arrived as
        it goes; TransferCorrupt (and no file) unless its sha256 is the one it was sent with."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.data is not None:
            got = hashlib.sha256(self.data).hexdigest()
            if got != self.sha256:
                raise _corrupt(self.name, got, self.sha256)
            target.write_bytes(self.data)
            return target
        if self.path is None:
            raise TransferCorrupt(f"{self.name}: neither bytes nor a path arrived")
        got, _ = copy_hashing(self.path, target)
        if got != self.sha256:
            target.unlink(missing_ok=True)
            raise _corrupt(self.name, got, self.sha256)
        return target


@dataclass(frozen=True)
class JobPayload:
    """A generation job as a replica receives it: files, options, what to make."""

    job_id: str | None
    video: FileBlob
    audio: FileBlob
    options: RunOptions  # work_dir cleared: the replica uses its own
    side_by_side: bool
    attempt: int = 1
    job_dir: str | None = None  # the job's own folder under the shared folder (else files travel as bytes)

    @classmethod
    def pack(cls, job_id: str | None, video: str | os.PathLike[str], audio: str | os.PathLike[str],
             options: RunOptions, *, side_by_side: bool,
             shared_dir: str | os.PathLike[str] | None = None) -> JobPayload:
        """The job's inputs as bytes, or (``shared_dir``) as paths under the shared folder, with
        a folder of the job's own made there (:meth:`remove_shared` removes it)."""
        if shared_dir is None:
            return cls(job_id=job_id, video=FileBlob.of(video), audio=FileBlob.of(audio), options=options,
                       side_by_side=side_by_side)
        job_dir = Path(shared_dir) / f"{JOB_FOLDER}{uuid.uuid4().hex[:12]}"
        job_dir.mkdir(parents=True)
        try:  # video/ and audio/: the two inputs may share a name
            return cls(job_id=job_id, video=FileBlob.of(video, shared_dir=shared_dir, folder=job_dir / "video"),
                       audio=FileBlob.of(audio, shared_dir=shared_dir, folder=job_dir / "audio"),
                       options=options, side_by_side=side_by_side, job_dir=os.fspath(job_dir))
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise

    @property
    def reply_dir(self) -> Path | None:
        """Where this attempt's replica puts its reply files (None: they travel as bytes)."""
        return Path(self.job_dir) / f"out-{self.attempt}" if self.job_dir else None

    def remove_reply(self) -> None:
        """Remove this attempt's reply files from the shared folder (its inputs stay)."""
        if self.reply_dir is not None:
            shutil.rmtree(self.reply_dir, ignore_errors=True)

    def remove_shared(self) -> None:
        """Remove the job's folder under the shared folder: its input copies and every
        attempt's replies (inputs that were the user's files there are not in it)."""
        if self.job_dir is not None:
            shutil.rmtree(self.job_dir, ignore_errors=True)


@dataclass(frozen=True)
class JobReply:
    """What a replica sends back: the run's result (no originals, no speech), the output
    files, where it ran (``host``: node id and address, replica, device facts) and the
    sha256 of the inputs as they arrived."""

    result: RunResult
    outputs: dict[str, FileBlob]
    host: dict[str, Any]
    received: dict[str, str]
