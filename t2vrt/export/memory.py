"""Hand memory back to the OS between export stages.

An export's stages have very different shapes: tracing makes millions of small allocations, a module or a gate
session a few huge ones. glibc keeps what is freed on its heap for reuse (its mmap threshold rises after big frees,
so later blocks of up to 32 MiB land on the heap too), and the next stage's peak is added on top: at full size
2.7 GB of freed heap was still resident when the UNet's fp32 gate opened (measured with malloc_trim before and
after). `release_memory` collects cycles, then asks glibc to return its free pages (a no-op elsewhere).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim  # glibc only: musl and macOS have none
        return trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
