"""confine(): a path read from an untrusted file (a bundle's manifest) resolved inside its root, or one UsageError.

Refused: anything that is not a non-empty string, absolute paths (POSIX or Windows style), `..` anywhere, backslashes,
NUL bytes, and any path that leaves the root once symlinks are resolved (a symlink inside the bundle pointing out of
it). Symlinks that stay inside the root are fine. The returned path is `root / relative` as given (so it stays
relative to the caller's root, e.g. for writing it back into a manifest); the check is made on the resolved path.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from t2vrt.errors import UsageError


def confine(root: str | os.PathLike[str], relative: object, what: str = "path", source: str | None = None) -> Path:
    """`root / relative` resolved, guaranteed to be inside `root`; UsageError naming the value otherwise.

    `what` names the value in the message ("unet fp16 graph"); `source` the file it came from (manifest.json).
    The target need not exist (callers check that with their own message).
    """
    where = f" in {source}" if source else ""

    def refuse(why: str) -> UsageError:
        return UsageError(f"{what} {relative!r}{where} {why}; bundle paths must be relative and stay inside {root}")

    if not isinstance(relative, str) or not relative:
        raise refuse("is not a non-empty string")
    if "\x00" in relative:
        raise refuse("contains a NUL byte")
    if "\\" in relative:
        raise refuse("contains a backslash")
    if (
        PurePosixPath(relative).is_absolute()
        or PureWindowsPath(relative).is_absolute()
        or PureWindowsPath(relative).drive
    ):
        raise refuse("is absolute")
    if ".." in PurePosixPath(relative).parts:
        raise refuse("contains '..'")
    base = Path(os.path.realpath(root))
    resolved = Path(os.path.realpath(base / relative))
    if resolved != base and base not in resolved.parents:
        raise refuse(f"leaves the bundle through a symlink (it resolves to {resolved})")
    return Path(root) / relative
