"""What travels to and from a Ray replica (``jobs.ray_payload``), without Ray: real files in
temporary folders, one of them playing the shared folder every node mounts."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

from jobs.ray_payload import FileBlob, JobPayload, TransferCorrupt, copy_hashing
from pipeline.options import RunOptions
from pipeline.weights import HASH_CHUNK

DATA = os.urandom(HASH_CHUNK + 17)  # more than one step of copying and hashing
SINK = Path(os.devnull)  # takes every byte and reads back none


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, relative, sorted."""
    return sorted(os.fspath(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    return folder


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "local" / "face.mp4"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


def test_copy_hashing_copies_and_hashes_in_one_pass(source: Path, tmp_path: Path) -> None:
    assert copy_hashing(source, tmp_path / "copy") == (_sha(DATA), len(DATA))
    assert (tmp_path / "copy").read_bytes() == DATA


def test_a_blob_of_bytes_saves_what_arrived(source: Path, tmp_path: Path) -> None:
    blob = FileBlob.of(source)
    assert (blob.sha256, blob.size, blob.path) == (_sha(DATA), len(DATA), None)
    assert blob.save(tmp_path / "out" / "a.mp4").read_bytes() == DATA


@pytest.mark.parametrize("shared_mode", [False, True])
def test_save_checks_the_bytes_that_arrived_not_the_file_read_back(shared_mode: bool, source: Path,
                                                                  shared: Path, tmp_path: Path) -> None:
    """Saved into a sink that reads back nothing: a check that re-read the file would fail."""
    blob = (FileBlob.of(source, shared_dir=shared, folder=shared / "job") if shared_mode
            else FileBlob.of(source))
    sink = tmp_path / "sink.mp4"
    sink.symlink_to(SINK)
    assert blob.save(sink) == sink


def test_corrupt_bytes_raise_and_write_nothing(source: Path, tmp_path: Path) -> None:
    blob = replace(FileBlob.of(source), sha256=_sha(b"other"))
    with pytest.raises(TransferCorrupt, match=rf"face.mp4 arrived corrupted: sha256 {_sha(DATA)[:12]} "
                                              rf"!= sent {_sha(b'other')[:12]}"):
        blob.save(tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_a_shared_copy_changed_in_transit_raises_and_leaves_no_file(source: Path, shared: Path,
                                                                    tmp_path: Path) -> None:
    blob = FileBlob.of(source, shared_dir=shared, folder=shared / "job")
    Path(blob.path).write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 0xFF]))  # the last byte changed (b"x" was DATA's own 1 time in 256)
    with pytest.raises(TransferCorrupt, match="face.mp4 arrived corrupted"):
        blob.save(tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_a_blob_without_bytes_or_path_raises(tmp_path: Path) -> None:
    with pytest.raises(TransferCorrupt, match="neither bytes nor a path arrived"):
        FileBlob(name="x.wav", sha256=_sha(b""), size=0).save(tmp_path / "x.wav")


def test_a_file_outside_the_shared_folder_is_copied_into_the_jobs_folder(source: Path, shared: Path) -> None:
    (shared / "job").mkdir()
    blob = FileBlob.of(source, shared_dir=shared, folder=shared / "job" / "video")
    assert blob.path == os.fspath(shared / "job" / "video" / "face.mp4")
    assert (blob.sha256, blob.size, blob.data) == (_sha(DATA), len(DATA), None)
    assert Path(blob.path).read_bytes() == DATA
    with pytest.raises(ValueError, match="needs the job's folder"):
        FileBlob.of(source, shared_dir=shared)


def test_a_file_under_the_shared_folder_travels_as_itself(shared: Path) -> None:
    own = shared / "mine" / "take.wav"
    own.parent.mkdir()
    own.write_bytes(DATA)
    blob = FileBlob.of(own, shared_dir=shared, folder=shared / "job")
    assert blob.path == os.fspath(own) and blob.sha256 == _sha(DATA)
    assert _files(shared) == ["mine", "mine/take.wav"]  # no copy, no job folder made


def test_a_copy_into_a_job_folder_that_is_gone_fails_and_makes_nothing(source: Path, shared: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileBlob.copy_in(source, shared / "job-gone" / "out-1")
    assert _files(shared) == []


def test_a_payload_of_bytes_has_no_shared_folder(source: Path) -> None:
    payload = JobPayload.pack("j", source, source, RunOptions(), side_by_side=False)
    assert payload.job_dir is None and payload.reply_dir is None
    assert payload.video.data == payload.audio.data == DATA
    payload.remove_reply()
    payload.remove_shared()


def test_a_jobs_shared_folder_lives_through_retries_and_goes_at_the_end(source: Path, shared: Path,
                                                                         tmp_path: Path) -> None:
    """Inputs of the same name do not collide; the user's own shared file is never removed."""
    own = shared / "take.mp4"
    own.write_bytes(b"the user's own file")
    other = tmp_path / "other" / "face.mp4"  # the same name as ``source``, other bytes
    other.parent.mkdir()
    other.write_bytes(b"speech")
    payload = JobPayload.pack("j", source, other, RunOptions(), side_by_side=True, shared_dir=shared)
    job_dir = Path(payload.job_dir)
    assert job_dir.parent == shared and job_dir.name.startswith("job-")
    assert payload.video.save(tmp_path / "v" / "face.mp4").read_bytes() == DATA
    assert payload.audio.save(tmp_path / "a" / "face.mp4").read_bytes() == b"speech"

    first = replace(payload, attempt=1)
    FileBlob.copy_in(source, first.reply_dir, name="result.mp4")  # a reply the lost attempt wrote
    assert first.reply_dir == job_dir / "out-1" and first.reply_dir.is_dir()
    first.remove_reply()  # re-run elsewhere: its replies go, its inputs stay
    second = replace(payload, attempt=2)
    assert second.video.save(tmp_path / "v2.mp4").read_bytes() == DATA
    FileBlob.copy_in(source, second.reply_dir, name="result.mp4")
    assert _files(job_dir) == ["audio", "audio/face.mp4", "out-2", "out-2/result.mp4", "video", "video/face.mp4"]

    mixed = JobPayload.pack("k", own, source, RunOptions(), side_by_side=False, shared_dir=shared)
    assert mixed.video.path == os.fspath(own)  # read in place
    second.remove_shared()
    mixed.remove_shared()
    assert _files(shared) == ["take.mp4"] and own.read_bytes() == b"the user's own file"


def test_a_pack_that_fails_leaves_no_folder_behind(source: Path, shared: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        JobPayload.pack("j", source, tmp_path / "missing.wav", RunOptions(), side_by_side=False,
                        shared_dir=shared)
    assert _files(shared) == []


def test_sweep_removes_only_job_folders_nothing_wrote_to_for_a_day(tmp_path: Path) -> None:
    """A job folder an app left when it died mid-job goes at the next start; a younger one
    (maybe another app's running job), one with a recent file, and the user's files stay."""
    import time

    from jobs.ray_payload import STALE_JOB_S, sweep_stale_jobs

    shared = tmp_path / "shared"
    old = time.time() - STALE_JOB_S - 60

    def folder(name: str, *, age_of_file: float | None) -> Path:
        (shared / name / "video").mkdir(parents=True)
        f = shared / name / "video" / "face.mp4"
        f.write_bytes(b"x")
        for p in (f, f.parent, f.parent.parent):
            os.utime(p, (old, old))
        if age_of_file is not None:
            os.utime(f, (time.time() - age_of_file,) * 2)
        return shared / name

    dead = folder("job-0123456789ab", age_of_file=None)
    busy = folder("job-ba9876543210", age_of_file=5.0)  # old folder, a file written 5 s ago
    mine = folder("mine", age_of_file=None)  # not a job folder: the user's
    young = shared / "job-00000000000f"
    young.mkdir()
    assert sweep_stale_jobs(shared) == [dead.name]
    assert not dead.exists() and busy.is_dir() and mine.is_dir() and young.is_dir()
    assert sweep_stale_jobs(shared) == []
