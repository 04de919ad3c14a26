"""sha256 verification of a bundle's files, remembering verdicts so a second run does not re-hash gigabytes.

The verdict cache lives OUTSIDE the bundle, in the user's cache directory ($T2VRT_CACHE_DIR, else
$XDG_CACHE_HOME/t2vrt, else ~/.cache/t2vrt; one small JSON file written atomically). Not under the bundle because:
- the bundle is the untrusted input: whoever made a tampered bundle could ship a cache saying "verified" for it;
- bundles may be read-only (a shared install, a container image) and copies of a bundle must not carry verdicts.

An entry maps (real path, device, inode, size, mtime_ns, ctime_ns) -> the sha256 computed for that file. ctime
cannot be set from user space, so rewriting a file and restoring its mtime still invalidates the entry. A file
changed less than RACY_NS before it was hashed is not remembered (timestamps are coarse: a write in the same tick
would keep the same key; git's "racy clean" rule). The entry
stores the digest, not "ok": a manifest with a different expectation is still compared. A missing or corrupt cache
only costs a re-hash; a cache that cannot be written is skipped silently (the files were still verified).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from t2vrt.errors import UsageError

CACHE_NAME = "verified-files.json"
CACHE_VERSION = 1
MAX_ENTRIES = 4096  # oldest dropped first; a bundle has about a dozen files
CHUNK = 1 << 20
RACY_NS = 2_000_000_000


def cache_dir() -> Path:
    if os.environ.get("T2VRT_CACHE_DIR"):
        return Path(os.environ["T2VRT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "t2vrt"


@dataclass(frozen=True)
class Expected:
    path: Path
    sha256: str  # lowercase hex
    size: int | None = None  # checked first when given: a wrong size needs no hashing


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return h.hexdigest()


def _stat_key(path: Path) -> tuple[str, os.stat_result]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{real}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}", st


class VerdictCache:
    """key -> sha256, loaded once and saved once per verify() call."""

    def __init__(self, directory: Path | None = None) -> None:
        self.file = (directory or cache_dir()) / CACHE_NAME
        self.entries: dict[str, str] = {}
        self.hashed: list[Path] = []  # files actually hashed by this object (tests read it)
        try:
            raw = json.loads(self.file.read_text())
            if isinstance(raw, dict) and raw.get("version") == CACHE_VERSION and isinstance(raw.get("entries"), dict):
                self.entries = {str(k): str(v) for k, v in raw["entries"].items()}
        except (OSError, ValueError):
            pass  # no cache yet, or a damaged one: start over

    def digest(self, path: Path) -> str:
        key, st = _stat_key(path)
        if key in self.entries:
            return self.entries[key]
        sha = sha256_file(path)
        self.hashed.append(path)
        key_after, _ = _stat_key(path)  # changed while we read it: don't remember this digest
        fresh = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS
        if key_after == key and not fresh:
            self.entries.pop(key, None)
            self.entries[key] = sha
        return sha

    def save(self) -> None:
        items = list(self.entries.items())[-MAX_ENTRIES:]
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.file.name}.", dir=self.file.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"version": CACHE_VERSION, "entries": dict(items)}, f)
                os.replace(tmp, self.file)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            pass  # a read-only home: verification still happened, it just is not remembered


def verify(files: Iterable[Expected], cache: VerdictCache | None = None, what: str = "bundle") -> list[Path]:
    """Check each file's size and sha256; UsageError naming the first file that differs. Returns the files that
    had to be hashed (the others were answered by the cache)."""
    cache = cache if cache is not None else VerdictCache()
    before = len(cache.hashed)
    try:
        for e in files:
            try:
                size = os.stat(e.path).st_size
            except OSError as err:
                raise UsageError(
                    f"{e.path} is missing or unreadable ({err.strerror}): the {what} is incomplete"
                ) from None
            if e.size is not None and size != e.size:
                raise UsageError(
                    f"{e.path} has {size} bytes, the manifest says {e.size}: the file was changed or truncated; "
                    f"re-export the {what}"
                )
            try:
                got = cache.digest(e.path)
            except OSError as err:
                raise UsageError(f"{e.path} cannot be read ({err.strerror}): the {what} is damaged") from None
            if got != e.sha256.lower():
                raise UsageError(
                    f"{e.path} fails its sha256 check (it is {got[:16]}..., the manifest says {e.sha256[:16]}...): "
                    f"the file was changed or corrupted; re-export the {what}"
                )
    finally:
        if len(cache.hashed) > before:
            cache.save()
    return cache.hashed[before:]
