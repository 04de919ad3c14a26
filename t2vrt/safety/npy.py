"""A .npy reader for untrusted files: the header is checked before a byte of data is read or allocated.

Refused, each with one UsageError line: files that are not .npy (no magic: text, pickles, .npz), format versions
other than 1.0/2.0, headers numpy itself rejects, object/string/structured/complex/integer dtypes (only real
float16/32/64), shapes of the wrong rank or absurd size, a file whose length does not match its header (truncated,
or a header claiming terabytes), NaN or inf, and float64 values that overflow float32. Never unpickles
(allow_pickle is never true, and object dtypes are refused before reading). Returns C-contiguous float32.
"""

from __future__ import annotations

import math
import os
import tokenize
from pathlib import Path
from typing import BinaryIO

import numpy as np

from t2vrt.errors import UsageError

MAX_BYTES = 4 << 30  # no latent this model can use comes near (1024 frames at 1024x1024 is 0.5 GiB of float64)
MAX_HEADER = 10_000
F32_MAX = float(np.finfo(np.float32).max)


def _header(f: BinaryIO, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    from numpy.lib import format as npformat

    start = f.read(6)
    f.seek(0)
    if start != b"\x93NUMPY":
        text = bool(start) and all(32 <= b < 127 or b in (9, 10, 13) for b in start)
        kind = "a text file" if text else "not a .npy array"
        raise UsageError(f"{what} is {kind}: expected a .npy file written by numpy.save")
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            return npformat.read_array_header_1_0(f, max_header_size=MAX_HEADER)
        if version == (2, 0):
            return npformat.read_array_header_2_0(f, max_header_size=MAX_HEADER)
    except (ValueError, SyntaxError, TypeError, OverflowError, tokenize.TokenError) as e:
        raise UsageError(f"{what} has a malformed .npy header ({str(e).splitlines()[0][:200]})") from None
    raise UsageError(f"{what} uses .npy format version {version[0]}.{version[1]}; expected 1.0 or 2.0")


def load_npy(
    path: str | os.PathLike[str], ndim: int | None = None, max_bytes: int = MAX_BYTES, what: str | None = None
) -> np.ndarray:
    """Read a float .npy safely; `ndim` is the rank it must have. Returns float32."""
    p = Path(path)
    what = what or str(p)
    try:
        f = open(p, "rb")
    except OSError as e:
        raise UsageError(f"{what}: cannot open ({e.strerror})") from None
    with f:
        shape, fortran, dtype = _header(f, what)
        if (
            dtype.hasobject
            or dtype.fields is not None
            or dtype.subdtype is not None
            or dtype.kind != "f"
            or dtype.itemsize not in (2, 4, 8)
        ):
            raise UsageError(f"{what} holds {dtype} values; expected real floats (float16, float32 or float64)")
        if ndim is not None and len(shape) != ndim:
            raise UsageError(f"{what} has {len(shape)} dimensions {shape}; expected {ndim}")
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise UsageError(f"{what} has an invalid shape {shape}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes > max_bytes:
            raise UsageError(
                f"{what} claims shape {shape} of {dtype} ({nbytes:,} bytes); at most {max_bytes:,} accepted"
            )
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        if size != offset + nbytes:
            raise UsageError(
                f"{what} is {size:,} bytes but its header promises {offset + nbytes:,} "
                f"(shape {shape}, {dtype}): truncated or not a plain .npy"
            )
        data = f.read(nbytes)
    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    if not np.isfinite(arr).all():
        raise UsageError(f"{what} contains NaN or inf")
    if arr.dtype.itemsize == 8 and arr.size and float(np.abs(arr).max()) > F32_MAX:
        raise UsageError(
            f"{what} holds float64 values up to {float(np.abs(arr).max()):.3g}, beyond float32's "
            f"{F32_MAX:.3g}: they would become inf"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)
