"""Outputs built under a hidden temp name and swapped into place; leftovers of interrupted runs cleaned next time.

Names beside the target TARGET (a bundle, a frames directory, a video file):
    .TARGET.t2vrt-tmp-<pid>-<rand>[.ext]   being built by process <pid> (a marker inside says BUILDING)
    .TARGET.t2vrt-old-<pid>-<rand>         the previous TARGET moved aside (only without an atomic exchange)
The swap of a directory is ONE atomic exchange where the OS has one (Linux renameat2(RENAME_EXCHANGE): the final
name always holds either the old or the new directory). Elsewhere it is two renames, and the next run on the same
target finishes a half-done swap: when TARGET is missing it puts back the newest complete candidate.
The next run on a target also cleans leftovers of runs whose process is gone (never those of a live process),
deleting only what their marker says t2vrt wrote (t2vrt.safety.owned) and carrying anything else into TARGET.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from t2vrt.errors import UsageError
from t2vrt.safety import owned as own
from t2vrt.safety.diskfull import DiskFull, disk_full, is_disk_full, reraise_disk_full
from t2vrt.safety.signals import deferred

Recognise = Callable[[Path], "own.Owned | None"]  # a t2vrt directory written before markers existed -> its owner
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False  # glibc < 2.28 or another libc
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # kernel or filesystem without the flag (some network and FUSE filesystems)
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def check_target(path: str | os.PathLike[str], flag: str = "output") -> Path:
    """The absolute, normalised target; refuses the filesystem root and names that are not names."""
    raw = os.fspath(path)
    target = Path(os.path.abspath(raw))
    if target == target.parent or not target.name:
        raise UsageError(f"{flag} {raw!r} is the filesystem root; give a new directory or file name")
    return target


def temp_path(target: Path, role: str = "tmp", suffix: str = "") -> Path:
    return target.with_name(f".{target.name}.t2vrt-{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def _pattern(target: Path) -> re.Pattern[str]:
    name = re.escape(target.name)
    # ours: pid + random tag; earlier t2vrt versions: .NAME.tmp-<hex8> (export) and .NAME.partial-<hex8>[.ext] (video)
    return re.compile(
        rf"\.{name}\.(?:t2vrt-(?P<role>tmp|old)-(?P<pid>\d+)-[0-9a-f]{{8}}|(?P<legacy>tmp|partial)-[0-9a-f]{{8}})(?:\.\w+)?"
    )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(target: Path) -> list[Path]:
    """Temp names beside `target` left by runs whose process is gone."""
    pat = _pattern(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    found = []
    for name in names:
        m = pat.fullmatch(name)
        if m and (m.group("legacy") or not _alive(int(m.group("pid")))):
            found.append(target.parent / name)
    return sorted(found)


def carry(src: Path, dst: Path, rels: list[str]) -> list[str]:
    """Move foreign entries `rels` from src to the same place under dst; returns those that could not move."""
    stuck = []
    for rel in rels:
        to = dst / rel
        if os.path.lexists(to):
            stuck.append(rel)
            continue
        to.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src / rel, to)
    return stuck


def conflicts(old: Path, owner: own.Owned, new: Path) -> list[str]:
    """Foreign entries of `old` whose place in `new` is taken by t2vrt's new output."""
    return [rel for rel in own.foreign_entries(old, owner) if os.path.lexists(new / rel)]


def clean_leftovers(target: Path, kind: str) -> list[str]:
    """Finish or undo what interrupted runs left beside `target`. Returns notes for the user (entries kept)."""
    found = leftovers(target)
    if not found:
        return []
    notes: list[str] = []
    if not os.path.lexists(target):  # a swap cut between its two renames: put the newest complete output back
        complete = [
            (o.created_ns, p)
            for p in found
            if p.is_dir() and (o := own.read_marker(p)) is not None and o.state == own.COMPLETE and o.kind == kind
        ]
        if complete:
            best = max(complete)[1]
            os.rename(best, target)
            found.remove(best)
    for path in found:
        if not path.is_dir() or path.is_symlink():
            path.unlink(missing_ok=True)  # a temp file: written only by t2vrt
            continue
        owner = own.read_marker(path)
        if owner is not None and owner.host and owner.host != socket.gethostname():
            notes.append(f"kept {path}: written from host {owner.host}, whose processes cannot be checked from here")
            continue
        if owner is None:
            if _pattern(target).fullmatch(path.name).group("legacy"):  # type: ignore[union-attr]
                own.remove_owned(path, own.Owned(kind, own.BUILDING, frozenset()))  # old-style temp dir: all ours
            else:
                notes.append(f"kept {path}: it has no t2vrt marker")
            continue
        foreign = own.foreign_entries(path, owner)
        if foreign and target.is_dir() and not target.is_symlink():
            foreign = carry(path, target, foreign)
        left = own.remove_owned(path, owner) if not foreign else foreign
        if left:
            notes.append(f"kept {path}: it holds files t2vrt did not write ({', '.join(left[:3])})")
    return notes


def owner_of(target: Path, kind: str, recognise: Recognise | None = None, flag: str = "output") -> own.Owned:
    """The owner of an existing directory we are about to replace; UsageError when t2vrt did not write it."""
    if target.is_symlink():
        raise UsageError(f"{flag} {target} is a symlink; not replacing it (give the real directory or a new name)")
    if not target.is_dir():
        raise UsageError(f"{flag} {target} exists and is not a directory; not replacing it")
    owner = own.read_marker(target) or (recognise(target) if recognise else None)
    if owner is None:
        entries = sorted(os.listdir(target))
        what = f"{len(entries)} entries, e.g. {', '.join(entries[:3])}" if entries else "empty"
        raise UsageError(
            f"{flag} {target} exists and is not a t2vrt {kind}: it was not written by t2vrt ({what}); "
            f"not touching it: choose a new path, or move it away yourself"
        )
    if owner.kind != kind:
        raise UsageError(f"{flag} {target} is a t2vrt {owner.kind}, not a {kind}; not replacing it")
    return owner


class StagedDir:
    """`with StagedDir(target, kind) as tmp: ...write into tmp...; staged.commit()`.

    prepare() checks the target before any work (call it early; __enter__ calls it if not). commit() lists what was
    written in the marker, swaps it into place, carries over foreign entries of the old directory and deletes only
    what t2vrt wrote there. Leaving the block without commit() (an error, Ctrl-C, SIGTERM) deletes the temp dir.
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        kind: str,
        recognise: Recognise | None = None,
        overwrite: bool = True,
        flag: str = "output",
    ) -> None:
        self.target = check_target(target, flag)
        self.kind, self.recognise, self.overwrite, self.flag = kind, recognise, overwrite, flag
        self.tmp = temp_path(self.target)
        self.old: Path | None = None  # where the previous output is during and after the swap
        self.state = "new"  # new -> prepared -> building -> swapped -> done
        self.notes: list[str] = []
        self.previous: own.Owned | None = None

    def prepare(self) -> own.Owned | None:
        """Clean earlier leftovers and check the target; returns the owner of the output being replaced, if any."""
        if self.state != "new":
            return self.previous
        self.notes = clean_leftovers(self.target, self.kind)
        if os.path.lexists(self.target):
            self.previous = owner_of(self.target, self.kind, self.recognise, self.flag)
            if not self.overwrite:
                raise UsageError(f"{self.flag} {self.target} already exists; pass --overwrite to replace it")
        self.state = "prepared"
        return self.previous

    def __enter__(self) -> Path:
        self.prepare()
        with reraise_disk_full(self.target):
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir()
            self.state = "building"
            own.write_marker(self.tmp, self.kind, own.BUILDING)
        return self.tmp

    def commit(self) -> Path:
        if self.state != "building":
            raise RuntimeError(f"commit() in state {self.state}")
        with reraise_disk_full(self.target):
            files = frozenset(own.list_files(self.tmp))
            if os.path.lexists(self.target):  # re-check: it may have changed while we worked
                self.previous = owner_of(self.target, self.kind, self.recognise, self.flag)
                clash = conflicts(self.target, self.previous, self.tmp)
                if clash:
                    raise UsageError(
                        f"{self.flag} {self.target} holds files t2vrt did not write where the new output "
                        f"goes: {', '.join(clash[:5])}; move them away and re-run"
                    )
            own.write_marker(self.tmp, self.kind, own.COMPLETE, files)
            with deferred():  # no Ctrl-C / SIGTERM between the renames and the state that records them
                if not os.path.lexists(self.target):
                    os.rename(self.tmp, self.target)
                elif exchange(self.tmp, self.target):
                    self.old = self.tmp
                else:
                    self.old = temp_path(self.target, "old")
                    os.rename(self.target, self.old)
                    try:
                        os.rename(self.tmp, self.target)
                    except BaseException:
                        os.rename(self.old, self.target)
                        self.old = None
                        raise
                self.state = "swapped"
            self._finish()
        return self.target

    def _finish(self) -> None:
        if self.old is not None and self.previous is not None:
            foreign = carry(self.old, self.target, own.foreign_entries(self.old, self.previous))
            left = own.remove_owned(self.old, self.previous) if not foreign else foreign
            if left:
                self.notes.append(f"kept {self.old}: could not move {', '.join(left[:3])} into {self.target}")
        self.state = "done"

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.state == "building":
            with deferred():
                own.remove_owned(self.tmp, own.Owned(self.kind, own.BUILDING, frozenset()))
                self.state = "new"
        elif self.state == "swapped":
            self._finish()
        if isinstance(e, Exception) and not isinstance(e, DiskFull) and is_disk_full(e):
            raise disk_full(self.target) from None


@contextmanager
def staged_file(target: str | os.PathLike[str], suffix: str = "", flag: str = "output") -> Iterator[Path]:
    """A temp file name beside `target` (keeping `suffix`: writers pick the format from it), renamed onto `target`
    when the block succeeds, deleted when it does not. Leftover temp files of dead runs are deleted first."""
    final = check_target(target, flag)
    for path in leftovers(final):
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
    tmp = temp_path(final, suffix=suffix)
    try:
        with reraise_disk_full(final):
            yield tmp
            os.replace(tmp, final)
    finally:
        with deferred():
            tmp.unlink(missing_ok=True)
