"""The --state directory. Every path comes from a server-made job id (checked by shape) and a fixed name:
no request can name a file.

    jobs.sqlite3 (+ -wal, -shm)    the job store
    uploads/<id>.<ext>             a job's input_reference (or a remix's source video), kept until the job goes
    videos/<id>/                   a finished job: video.mp4, thumbnail.png, spritesheet.jpg
    videos/.<id>.partial/          a job being written; renamed to videos/<id>/ when complete
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from t2vrt.errors import UsageError
from t2vrt.serve.ids import is_job_id

VARIANTS = {
    "video": ("video.mp4", "video/mp4"),
    "thumbnail": ("thumbnail.png", "image/png"),
    "spritesheet": ("spritesheet.jpg", "image/jpeg"),
}


def _checked(job_id: str) -> str:
    if not is_job_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")  # a programming error: the API checks ids first
    return job_id


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        try:
            for sub in ("uploads", "videos"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--state {root}: cannot create the state directory ({e.strerror or e})") from e
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise UsageError(f"--state {root} is not writable")

    @property
    def db_path(self) -> Path:
        return self.root / "jobs.sqlite3"

    def upload_path(self, job_id: str, ext: str) -> Path:
        if ext not in (".png", ".jpg", ".gif", ".mp4", ".webm"):
            raise ValueError(f"not an upload extension: {ext!r}")
        return self.root / "uploads" / f"{_checked(job_id)}{ext}"

    def write_upload(self, job_id: str, data: bytes, ext: str) -> Path:
        """Write under a temp name, then rename: a crash never leaves a partial upload under the final name."""
        target = self.upload_path(job_id, ext)
        tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def copy_upload(self, job_id: str, source: Path, ext: str) -> Path:
        return self.write_upload(job_id, source.read_bytes(), ext)

    def result_dir(self, job_id: str) -> Path:
        return self.root / "videos" / _checked(job_id)

    def result_file(self, job_id: str, variant: str) -> Path:
        return self.result_dir(job_id) / VARIANTS[variant][0]

    def partial_dir(self, job_id: str) -> Path:
        """An empty directory for a job's outputs in the making (whatever an earlier attempt left is removed)."""
        path = self.root / "videos" / f".{_checked(job_id)}.partial"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    def publish(self, job_id: str, partial: Path) -> Path:
        """partial/ -> videos/<id>/ by rename (replacing what an interrupted earlier attempt left)."""
        final = self.result_dir(job_id)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        return final

    def remove_partial(self, job_id: str) -> None:
        shutil.rmtree(self.root / "videos" / f".{_checked(job_id)}.partial", ignore_errors=True)

    def remove(self, job_id: str) -> None:
        """Every file of a job: its result directory, partial outputs and uploads."""
        _checked(job_id)
        shutil.rmtree(self.result_dir(job_id), ignore_errors=True)
        shutil.rmtree(self.root / "videos" / f".{job_id}.partial", ignore_errors=True)
        for f in (self.root / "uploads").glob(f"{job_id}.*"):
            f.unlink(missing_ok=True)

    def sweep(self, known: set[str]) -> int:
        """At start: remove partial files and the files of jobs the store does not know (a crash between writing
        an upload and committing its job). Returns how many entries went."""
        gone = 0
        for sub in ("uploads", "videos"):
            for entry in (self.root / sub).iterdir():
                stem = entry.name.lstrip(".").split(".")[0]
                if entry.name.startswith(".") or stem not in known:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                    gone += 1
        return gone
