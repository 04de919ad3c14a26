"""The marker that says "t2vrt owns this directory", and the only way t2vrt deletes inside a directory.

Every directory t2vrt writes as a unit (a bundle, a directory of frames) carries MARKER, a small JSON file naming
its kind and the files t2vrt wrote there. t2vrt deletes only:
- files listed in a directory's marker (and the marker itself, and directories left empty that held listed files);
- a temp directory whose marker says it is still being built (everything in it was written by that run).
Anything else in the directory (a user's notes, engines written later by `t2vrt build`, an empty folder) is foreign:
it is carried over to the replacement or left where it is, never deleted.

A marker comes from a directory that may be untrusted (a downloaded bundle): its file list is honoured only for plain
relative paths whose parent directory resolves inside the directory, so it can never name a file elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MARKER = ".t2vrt-owned"
NOTICE = "t2vrt owns this directory: it replaces or deletes only the files listed here; anything else is left alone"
MAX_MARKER_BYTES = 16 << 20
BUILDING, COMPLETE = "building", "complete"


@dataclass(frozen=True)
class Owned:
    kind: str  # "bundle" | "frames" | ...
    state: str  # BUILDING (every file is t2vrt's) | COMPLETE (only `files` are)
    files: frozenset[str]  # relative POSIX paths t2vrt wrote (ignored while BUILDING)
    pid: int = 0
    host: str = ""
    created_ns: int = 0

    def owns(self, rel: str) -> bool:
        return self.state == BUILDING or rel in self.files


def write_marker(directory: Path, kind: str, state: str, files: frozenset[str] | None = None) -> Owned:
    owned = Owned(kind, state, frozenset(files or ()), os.getpid(), socket.gethostname(), time.time_ns())
    body = {
        "t2vrt": NOTICE,
        "kind": kind,
        "state": state,
        "pid": owned.pid,
        "host": owned.host,
        "created_ns": owned.created_ns,
        "files": sorted(owned.files),
    }
    tmp = directory / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, directory / MARKER)
    return owned


def _safe_rel(rel: object) -> str | None:
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return None
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "." in p.parts or str(p) != rel or rel == MARKER:
        return None
    return rel


def read_marker(directory: Path) -> Owned | None:
    """The directory's marker, or None when it has none (or one that is not a t2vrt marker)."""
    path = directory / MARKER
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MARKER_BYTES:
            return None
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or raw.get("t2vrt") != NOTICE or raw.get("state") not in (BUILDING, COMPLETE):
            return None
        files = raw.get("files")
        safe = frozenset(r for r in (files if isinstance(files, list) else []) if _safe_rel(r))
        return Owned(
            str(raw.get("kind")),
            raw["state"],
            safe,
            int(raw.get("pid") or 0),
            str(raw.get("host") or ""),
            int(raw.get("created_ns") or 0),
        )
    except (OSError, ValueError, TypeError, RecursionError):
        return None


def list_files(directory: Path) -> list[str]:
    """Every file and symlink under `directory` (symlinked directories are not followed), as relative POSIX paths,
    the marker excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        rel_dir = Path(dirpath).relative_to(directory)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = (rel_dir / name).as_posix()
            if rel != MARKER:
                out.append(rel)
    return sorted(out)


def _ancestors(files: frozenset[str]) -> set[str]:
    return {p.as_posix() for f in files for p in PurePosixPath(f).parents if str(p) != "."}


def foreign_entries(directory: Path, owned: Owned) -> list[str]:
    """Top-most entries under `directory` that t2vrt did not write (files, symlinks, folders holding nothing of t2vrt's)."""
    if owned.state == BUILDING:
        return []
    keep = _ancestors(owned.files)
    out: list[str] = []

    def walk(d: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            rel = f"{prefix}{entry.name}"
            if rel == MARKER or rel in owned.files:
                continue
            if rel in keep and entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), rel + "/")
            else:
                out.append(rel)

    walk(directory, "")
    return out


def _inside(directory: Path, path: Path) -> bool:
    base = os.path.realpath(directory)
    parent = os.path.realpath(path.parent)
    return parent == base or parent.startswith(base + os.sep)


def remove_owned(directory: Path, owned: Owned) -> list[str]:
    """Delete what t2vrt wrote in `directory` (everything, while BUILDING), then the directory if nothing is left.
    Returns the foreign entries left behind (empty when the directory is gone)."""
    if owned.state == BUILDING:
        _rmtree(directory)
        return []
    for rel in sorted(owned.files):
        path = directory / rel
        if _inside(directory, path) and (path.is_symlink() or path.is_file()):
            path.unlink()
    for rel in sorted(_ancestors(owned.files), key=lambda r: -r.count("/")):  # deepest first
        path = directory / rel
        if path.is_dir() and not path.is_symlink() and _inside(directory, path):
            try:
                path.rmdir()
            except OSError:
                pass  # holds something foreign
    left = foreign_entries(directory, owned)
    if not left:
        (directory / MARKER).unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError:
            pass
    return left


def _rmtree(directory: Path) -> None:
    """Delete a temp tree this process family built; never follows symlinks."""
    for dirpath, dirnames, filenames in os.walk(directory, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            p = os.path.join(dirpath, name)
            os.unlink(p) if os.path.islink(p) else os.rmdir(p)
    os.rmdir(directory)


def iter_markers(directories: list[Path]) -> Iterator[tuple[Path, Owned]]:
    for d in directories:
        owned = read_marker(d)
        if owned is not None:
            yield d, owned
