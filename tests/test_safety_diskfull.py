"""A full disk is one line, "disk full at PATH", from every writer, and leaves no partial file: a real 2 MiB tmpfs."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from t2vrt.safety.diskfull import DiskFull


@pytest.fixture()
def full_fs(tmp_path: Path) -> Iterator[Path]:
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI containers run as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    st = os.statvfs(mnt)
    with open(mnt / FILLER, "wb") as f:  # leave 256 KiB free: less than any output below needs
        f.write(b"\0" * (st.f_bavail * st.f_frsize - (256 << 10)))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


FILLER = "filler"


def _noise(n: int = 30) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)  # incompressible


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.gif", "frames"])
def test_video_writers(full_fs: Path, name: str) -> None:
    from t2vrt.runtime.video import save_video

    frames = _noise(30)
    with pytest.raises(DiskFull, match=f"^disk full at {full_fs / name}") as e:
        save_video(frames, full_fs / name)
    assert "\n" not in str(e.value) and os.listdir(full_fs) == [FILLER]


def test_cli_gif_on_a_full_disk_prints_one_line_and_no_traceback_at_exit(full_fs: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "frames.npy", _noise())
    code = (
        "import numpy as np, sys; from t2vrt.runtime.video import save_video; from t2vrt.commands import reports_errors\n"
        "reports_errors(lambda: save_video(np.load(sys.argv[1]), sys.argv[2]))()"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "frames.npy"), str(full_fs / "a.gif")],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 1
        and r.stderr.strip()
        == f"error: disk full at {full_fs / 'a.gif'}: free some space there (or write elsewhere) and re-run"
    ), r.stderr
    assert os.listdir(full_fs) == [FILLER]


def test_staged_directories_and_records(full_fs: Path) -> None:
    from t2vrt.benchmark import report
    from t2vrt.safety.atomic import StagedDir

    staged = StagedDir(full_fs / "bundle", "bundle")
    with pytest.raises(DiskFull, match=f"^disk full at {full_fs / 'bundle'}"), staged as tmp:
        (tmp / "model.onnx").write_bytes(os.urandom(1 << 20))
        staged.commit()
    with pytest.raises(DiskFull, match=f"^disk full at {full_fs / 'rec.json'}"):
        report.write_json(full_fs / "rec.json", {"x": uuid.uuid4().hex * 100_000})
    assert os.listdir(full_fs) == [FILLER]


def test_engine_store_writers(full_fs: Path) -> None:
    """`t2vrt build`'s writers: an engine plan, its sidecar / plan.json / manifest JSON; nothing partial is left."""
    from t2vrt.engine.store import write_engine
    from t2vrt.manifest import write_json_atomic

    engines = full_fs / "engines"
    with pytest.raises(DiskFull, match=f"^disk full at {engines}"):
        write_engine(engines / "unet.plan", os.urandom(1 << 20), {"component": "unet"})
    with pytest.raises(DiskFull, match=f"^disk full at {full_fs}"):
        write_json_atomic(full_fs / "plan.json", {"x": uuid.uuid4().hex * 100_000})
    assert sorted(os.listdir(full_fs)) == sorted([FILLER, "engines"]) and os.listdir(engines) == []
