"""`--lora SOURCE[:SCALE]`: one LoRA to merge, as the user named it (torch-free)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from t2vrt.errors import UsageError

_SCALE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class LoraSpec:
    """source: a local file or folder, or a hub id `owner/name[/subfolder...][/file]`; scale multiplies the delta."""

    source: str
    scale: float = 1.0

    def __str__(self) -> str:
        return self.source if self.scale == 1.0 else f"{self.source}:{self.scale:g}"


def parse_lora_spec(text: str) -> LoraSpec:
    """'path/or/hub-id' or 'path/or/hub-id:0.8'. A trailing ':<number>' is the scale; anything else is the source.

    Windows drive letters ('C:\\loras\\x.pt') survive: their colon is not followed by a number alone.
    """
    text = text.strip()
    if not text:
        raise UsageError("--lora needs a source: a file, a folder or a hub id, optionally with :SCALE")
    source, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and _SCALE.match(tail):
        source, scale = head, float(tail)
    if not source:
        raise UsageError(f"--lora {text!r}: the source before ':{tail}' is empty")
    if not math.isfinite(scale):
        raise UsageError(f"--lora {text!r}: the scale must be a finite number, got {scale}")
    return LoraSpec(source, scale)
