"""Never delete what t2vrt did not write; swaps never leave the final name missing; interrupted runs are cleaned.

Real process deaths (SIGKILL) make the leftovers; nothing is faked except, in one test, the absence of an atomic
exchange (to exercise the two-rename fallback and its recovery).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from t2vrt.errors import UsageError
from t2vrt.safety import atomic, owned
from t2vrt.safety.atomic import StagedDir, clean_leftovers, exchange, leftovers


def _write(staged: StagedDir, files: dict[str, str]) -> Path:
    with staged as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        staged.commit()
    return staged.target


def _tree(d: Path) -> dict[str, str]:
    return {
        p.relative_to(d).as_posix(): p.read_text()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != owned.MARKER
    }


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_exchange_swaps_two_directories(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "y").write_text("b")
    if not exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this OS/filesystem: the two-rename fallback is tested below")
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]


@pytest.mark.parametrize("atomic_exchange", [True, False], ids=["exchange", "two-renames"])
def test_replacing_keeps_user_files_and_refuses_foreign_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, atomic_exchange: bool
) -> None:
    if not atomic_exchange:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    target = tmp_path / "out"
    _write(StagedDir(target, "bundle"), {"manifest.json": "1", "unet/model.onnx": "g1", "unet/old.onnx": "stale"})
    # A user adds files (and an empty folder) inside t2vrt's directory; `t2vrt build` adds engines.
    (target / "notes.txt").write_text("mine")
    (target / "unet" / "my-copy.onnx").write_text("mine too")
    (target / "engines" / "gpu").mkdir(parents=True)
    (target / "engines" / "gpu" / "a.plan").write_text("engine")
    (target / "empty").mkdir()
    _write(StagedDir(target, "bundle"), {"manifest.json": "2", "unet/model.onnx": "g2"})
    assert _tree(target) == {
        "manifest.json": "2",
        "unet/model.onnx": "g2",
        "notes.txt": "mine",
        "unet/my-copy.onnx": "mine too",
        "engines/gpu/a.plan": "engine",
    }
    assert (target / "empty").is_dir() and _hidden(tmp_path) == []  # no temp or old directory left
    assert json.loads((target / owned.MARKER).read_text())["files"] == ["manifest.json", "unet/model.onnx"]

    # A user's file where the new output writes: refused, naming it; the old output stays as it was.
    (target / "tokenizer.json").write_text("user's")
    with pytest.raises(UsageError, match="holds files t2vrt did not write where the new output goes: tokenizer.json"):
        _write(StagedDir(target, "bundle"), {"manifest.json": "3", "tokenizer.json": "t2vrt's"})
    assert (target / "manifest.json").read_text() == "2" and _hidden(tmp_path) == []

    # Directories t2vrt did not write are never replaced, whatever their content; nor another kind of t2vrt output.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text("{}")  # looks like a bundle, is not one
    for t, kind, why in (
        (mine, "bundle", "was not written by t2vrt"),
        (target, "frames", "is a t2vrt bundle, not a frames"),
    ):
        with pytest.raises(UsageError, match=why):
            StagedDir(t, kind).prepare()
    assert _tree(mine) == {"manifest.json": "{}"}
    with pytest.raises(UsageError, match="filesystem root"):
        StagedDir("/", "frames")
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        StagedDir(target, "bundle", overwrite=False).prepare()


def test_a_marker_cannot_name_files_outside_its_directory(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("x")
    body = {"t2vrt": owned.NOTICE, "kind": "frames", "state": "complete", "files": ["a", "../victim.txt", str(victim)]}
    (target / owned.MARKER).write_text(json.dumps(body))
    _write(StagedDir(target, "frames"), {"frame_0000.png": "new"})
    assert victim.read_text() == "precious" and _tree(target) == {"frame_0000.png": "new"}


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from t2vrt.safety import atomic
    from t2vrt.safety.atomic import StagedDir
    target, mode = Path(sys.argv[1]), sys.argv[2]
    staged = StagedDir(target, "frames")
    with staged as tmp:
        (tmp / "frame_0000.png").write_text("new")
        if mode == "build":
            os.kill(os.getpid(), signal.SIGKILL)  # dies while building
        atomic.exchange = lambda a, b: False  # force the two-rename swap, and die between its renames
        real = os.rename
        def rename_then_die(a, b):
            real(a, b)
            os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename_then_die
        staged.commit()
""")


def _die(target: Path, mode: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(target), mode], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_leftovers_of_killed_runs_are_cleaned_and_a_cut_swap_recovered(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    _write(StagedDir(target, "frames"), {"frame_0000.png": "old"})
    (target / "notes.txt").write_text("mine")

    _die(target, "build")  # SIGKILL while building: a temp dir is left behind
    assert len(leftovers(target)) == 1 and _tree(target) == {"frame_0000.png": "old", "notes.txt": "mine"}
    assert clean_leftovers(target, "frames") == [] and _hidden(tmp_path) == []

    _die(target, "swap")  # SIGKILL between the two renames: the final name is missing
    assert not target.exists() and len(leftovers(target)) == 2
    staged = StagedDir(target, "frames")
    staged.prepare()  # the next run recovers the newest complete output, carries the user's file, cleans the rest
    assert _tree(target) == {"frame_0000.png": "new", "notes.txt": "mine"} and _hidden(tmp_path) == []


def test_a_live_runs_temp_dir_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    staged = StagedDir(target, "frames")
    with staged as tmp:
        assert leftovers(target) == []  # our own pid is alive
        other = StagedDir(target, "frames")
        other.prepare()
        assert tmp.is_dir()
    assert _hidden(tmp_path) == []  # leaving without commit removes it


def test_staged_file_replaces_atomically_and_cleans_dead_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "clip.mp4"
    dead = tmp_path / ".clip.mp4.t2vrt-tmp-999999999-0123abcd.mp4"  # a pid no process has
    dead.write_bytes(b"half")
    legacy = tmp_path / ".clip.mp4.partial-89abcdef.mp4"  # what earlier t2vrt versions left
    legacy.write_bytes(b"half")
    with atomic.staged_file(target, ".mp4") as tmp:
        tmp.write_bytes(b"video")
        assert not target.exists()
    assert target.read_bytes() == b"video" and _hidden(tmp_path) == []
    with pytest.raises(KeyboardInterrupt), atomic.staged_file(target, ".mp4") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"video" and _hidden(tmp_path) == []
