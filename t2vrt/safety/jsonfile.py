"""A JSON reader for untrusted files (manifests, plan records): bounded in size and nesting, one line on failure.

Python's json module recurses per nesting level: a file of 100,000 `[` raises RecursionError (not a JSONDecodeError)
and a huge file is read whole. Both limits are checked before parsing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from t2vrt.errors import UsageError

MAX_BYTES = 64 << 20
MAX_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def read_json(
    path: str | os.PathLike[str], max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH, hint: str = ""
) -> Any:
    """Parse `path`; UsageError naming the file (and `hint`: what to do about it) when it is not sane JSON."""
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise UsageError(f"{p} is {size:,} bytes; at most {max_bytes:,} expected{tail}")
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{p} is unreadable ({e.strerror}){tail}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start}){tail}") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise UsageError(f"{p} nests {depth} levels deep; at most {max_depth} expected{tail}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise UsageError(f"{p} is not valid JSON ({str(e).splitlines()[0][:200]}){tail}") from None
