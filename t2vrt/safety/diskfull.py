"""A full disk, from any writer, is one line: "disk full at PATH".

Writers fail on a full disk in several shapes: OSError(ENOSPC) or OSError(EDQUOT) from Python's own I/O, an
exception from a library that wraps it (its __cause__ / __context__), a RuntimeError whose text carries the C
library's message (torch's and onnx's writers), or an external program's stderr (ffmpeg). `is_disk_full` knows them
all; `reraise_disk_full` turns any of them into T2VError naming the path, and leaves every other error alone.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from t2vrt.errors import T2VError

_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_TEXTS = ("no space left on device", "disk quota exceeded", "not enough space on the disk")


def text_says_disk_full(text: str) -> bool:
    low = text.lower()
    return any(t in low for t in _TEXTS)


def is_disk_full(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 16:
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            return True
        if text_says_disk_full(str(e)):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


class DiskFull(T2VError):
    """Exit code 1: the input was fine, the disk was not."""


def disk_full(path: Path | str) -> DiskFull:
    return DiskFull(f"disk full at {path}: free some space there (or write elsewhere) and re-run")


@contextmanager
def reraise_disk_full(path: Path | str) -> Iterator[None]:
    """Inside the block, a full disk becomes DiskFull naming `path`; any other exception passes untouched."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise disk_full(path) from None
        raise
