"""What travels between the app and a Ray replica: a job's files and options, and the reply.

No shared filesystem is assumed: a :class:`FileBlob` carries a file's bytes through the
Serve call (Ray moves them through its object store), with the sha256 both sides check.
With ``LIPSYNC_SHARED_DIR`` (a folder every node mounts) a blob carries a path under it
instead. Nothing here imports Ray: the app packs and unpacks, the replica
(``jobs.ray_serve``) materialises and replies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import LipSyncError
from pipeline.options import RunOptions, RunResult
from pipeline.weights import file_sha256

log = logging.getLogger(__name__)



class TransferCorrupt(LipSyncError):
    """A file arrived with other bytes than were sent (its sha256 differs)."""


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
           name: str | None = None) -> FileBlob:
        """``path`` as bytes, or (``shared_dir``) as a path under it (copied there unless it is)."""
        path = Path(path)
        name = name or path.name
        if shared_dir is None:
            data = path.read_bytes()
            return cls(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data), data=data)
        shared = Path(shared_dir).resolve()
        if shared not in path.resolve().parents:
            target = shared / f"in-{uuid.uuid4().hex[:12]}" / name
            target.parent.mkdir(parents=True)
            shutil.copyfile(path, target)
            path = target
        return cls(name=name, sha256=file_sha256(path), size=path.stat().st_size, path=os.fspath(path))

    def save(self, target: str | os.PathLike[str]) -> Path:
        """Write (or move, from a shared path) the file to ``target``; TransferCorrupt unless
        its sha256 is the one it was sent with."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.data is not None:
            target.write_bytes(self.data)
        elif self.path is not None:
            shutil.copyfile(self.path, target)
        else:
            raise TransferCorrupt(f"{self.name}: neither bytes nor a path arrived")
        got = file_sha256(target)
        if got != self.sha256:
            raise TransferCorrupt(f"{self.name} arrived corrupted: sha256 {got[:12]} != sent {self.sha256[:12]}")
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
    shared_dir: str | None = None  # replies put their files here as paths (else bytes)


@dataclass(frozen=True)
class JobReply:
    """What a replica sends back: the run's result (no originals, no speech), the output
    files, where it ran (``host``: node id and address, replica, device facts) and the
    sha256 of the inputs as they arrived."""

    result: RunResult
    outputs: dict[str, FileBlob]
    host: dict[str, Any]
    received: dict[str, str]
