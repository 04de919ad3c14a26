"""Reading LoRA files that nobody vouches for: safetensors, or torch pickles through the weights-only unpickler.

Every failure is one UsageError line naming the file: a truncated or corrupt file, a pickle that asks for anything but
tensors (it never runs: torch's weights-only unpickler refuses the global before calling it), a non-tensor payload.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t2vrt.errors import UsageError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _one_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class RawLora:
    """A file's tensors as stored: a {name: tensor} dict, or a list (the cloneofsimo format); plus text metadata."""

    path: Path
    tensors: dict[str, torch.Tensor] | None
    tensor_list: list[torch.Tensor] | None
    metadata: dict[str, str]


def read_raw(path: Path) -> RawLora:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch(path)
    raise UsageError(f"LoRA file {str(path)!r}: unknown extension {path.suffix!r} (expected .safetensors or .pt/.bin)")


def _read_safetensors(path: Path) -> RawLora:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"LoRA file {str(path)!r} is truncated or not safetensors: {_one_line(e)}") from None
    return RawLora(path, tensors, None, metadata)


def _read_torch(path: Path) -> RawLora:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"PK\x03\x04":
            raise UsageError(f"LoRA file {str(path)!r} is truncated: its zip archive has no directory")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = found.group(1) if found else _one_line(e)
        raise UsageError(
            f"LoRA file {str(path)!r} holds more than tensors ({what}); refused without running it"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise UsageError(f"LoRA file {str(path)!r} is corrupt or truncated: {_one_line(e)}") from None
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        return RawLora(path, None, list(obj), {})
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        return RawLora(path, dict(obj), None, {})
    raise UsageError(
        f"LoRA file {str(path)!r} holds a {type(obj).__name__}, not a list or a {{name: tensor}} dict of tensors"
    )


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{str(path)!r} is not readable JSON: {_one_line(e)}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{str(path)!r} must hold a JSON object, got {type(value).__name__}")
    return value
