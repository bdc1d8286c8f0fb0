"""Job temp folders under the data folder, and removing those left by a dead process.

Each job works in its own ``lipsync-job-*`` folder (``pipeline.run``) under
``RunOptions.work_dir``. The app passes a folder of its own process,
``<data_dir>/work/<host>_<pid>_<start time>/``, so that at start-up the folders of an app
process that died (SIGKILL, OOM, power cut) can be found and deleted without touching those
of another live process on the same data folder. A folder of another host name (another
machine, or this container before a restart gave it a new name) is judged by its lease
file, which the owning server touches every HEARTBEAT_S (``storage.records.owner_alive``).
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from storage.records import owner_alive, self_owner

log = logging.getLogger(__name__)

WORK_FOLDER = "work"  # <data_dir>/work/<owner>/lipsync-job-*/
LEASE_FILE = ".lease"  # <data_dir>/work/<owner>/.lease: its mtime is the owner's last heartbeat


def _owner_name(pid: int, create_time: float, host: str) -> str:
    return f"{host}_{pid}_{create_time:.3f}"


def _parse_owner(name: str) -> tuple[int, float, str] | None:
    host, _, rest = name.rpartition("_")  # host names may hold "_"; pid and time never do
    host, _, pid = host.rpartition("_")
    try:
        return int(pid), float(rest), host
    except ValueError:
        return None


def process_work_dir(data_dir: str | os.PathLike[str]) -> Path:
    """This process's parent folder for job temp folders (created)."""
    folder = Path(data_dir) / WORK_FOLDER / _owner_name(*self_owner())
    folder.mkdir(parents=True, exist_ok=True)
    renew_lease(folder)
    return folder


def renew_lease(folder: Path) -> None:
    """Touch ``folder``'s lease file: its owner is alive now (a server's heartbeat calls this)."""
    (folder / LEASE_FILE).touch()


def _last_heard(folder: Path) -> datetime:
    """When the owner of ``folder`` last renewed its lease (the folder's own mtime without one)."""
    for path in (folder / LEASE_FILE, folder):
        try:
            return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        except OSError:
            continue
    return datetime.fromtimestamp(0, timezone.utc)


def clean_stale_work_dirs(data_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the work folders of processes that are gone; the folders deleted.

    Entries whose name is not an owner name are left alone (never ours to delete).
    """
    root = Path(data_dir) / WORK_FOLDER
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        owner = _parse_owner(entry.name)
        if owner is None or not entry.is_dir() or entry.is_symlink():
            continue
        pid, create_time, host = owner
        if owner_alive(pid, create_time, host, heartbeat=_last_heard(entry)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if entry.exists():
            log.warning("could not delete the stale work folder %s", entry)
        else:
            removed.append(entry)
    if removed:
        log.warning("deleted %d work folder(s) of ended processes: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed
