"""t2vrt's generation record inside its own videos: the prompt and parameters, as one JSON comment tag.

mp4 and webm carry it as the container's `comment` tag (written by ffmpeg's `-metadata`), GIF as its comment
extension. `t2vrt upscale` and `t2vrt extend` read it back so a second stage reuses the first stage's prompt.
Reading goes through the same bundled ffmpeg (`-f ffmetadata`), so no ffprobe is needed. Torch-free.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from t2vrt.errors import UsageError

PREFIX = "t2vrt:"  # tells our record from any other comment a file may carry
MAX_CHARS = 16384  # a record is a prompt and a few numbers; a longer comment is not ours


def to_comment(record: Mapping[str, Any]) -> str:
    """The record as the comment text: PREFIX + compact ASCII JSON (no raw newlines, safe in any container)."""
    text = PREFIX + json.dumps(dict(record), ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_CHARS:
        raise UsageError(f"metadata record is {len(text)} characters; at most {MAX_CHARS} fit (a shorter prompt)")
    return text


def from_comment(text: str | bytes | None) -> dict[str, Any] | None:
    """The record back from a comment, or None when the comment is absent, not ours, or malformed."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text or not text.startswith(PREFIX) or len(text) > MAX_CHARS:
        return None
    try:
        record = json.loads(text[len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _unescape_ffmetadata(text: str) -> dict[str, str]:
    """Parse ffmpeg's ffmetadata output: key=value lines where '=', ';', '#', '\\' and newline are backslash-escaped."""
    out: dict[str, str] = {}
    key: list[str] = []
    value: list[str] = []
    in_value = escaped = comment = False
    for ch in text:
        if comment:
            comment = ch != "\n"  # an unescaped ';' or '#' at a line's start comments the line out
        elif escaped:
            (value if in_value else key).append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "\n":
            if in_value:
                out.setdefault("".join(key).lower(), "".join(value))
            key, value, in_value = [], [], False
        elif ch in ";#" and not key and not in_value:
            comment = True
        elif ch == "=" and not in_value:
            in_value = True
        else:
            (value if in_value else key).append(ch)
    if in_value:
        out.setdefault("".join(key).lower(), "".join(value))
    return out


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    """The generation record of a t2vrt video (mp4, webm, gif), or None when it has none (or is not a file)."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix.lower() == ".gif":
        from PIL import Image

        try:
            with Image.open(p) as im:
                return from_comment(im.info.get("comment"))
        except OSError:
            return None
    import imageio_ffmpeg  # type: ignore[import-untyped]

    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None
    cmd = [exe, "-nostdin", "-v", "error", "-i", str(p), "-f", "ffmetadata", "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    tags = _unescape_ffmetadata(proc.stdout.decode("utf-8", errors="replace"))
    return from_comment(tags.get("comment"))
