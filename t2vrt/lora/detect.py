"""Which LoRA format a local file or folder is, and reading it into entries for a given UNet."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from t2vrt.config import UNet3DConfig
from t2vrt.errors import UsageError
from t2vrt.lora.entries import LoraFile
from t2vrt.lora.files import TORCH_SUFFIXES, read_json, read_raw, sha256_file
from t2vrt.lora.names import module_names
from t2vrt.lora.read_list import read_list
from t2vrt.lora.read_named import read_named

WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
PREFERRED = ("adapter_model.safetensors", "adapter_model.bin", "pytorch_lora_weights.safetensors", "unet_lora.pt")
WEBUI_METADATA = "stable_lora_text_to_video"


def weight_file(folder: Path) -> Path:
    """The one LoRA weight file in a folder (PEFT's adapter_model.*, diffusers', T2V-Turbo's, or the only one)."""
    for name in PREFERRED:
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(files) == 1:
        return files[0]
    if not files:
        raise UsageError(f"LoRA folder {str(folder)!r} has no .safetensors / .pt / .bin file")
    raise UsageError(
        f"LoRA folder {str(folder)!r} has several weight files ({', '.join(p.name for p in files[:5])}): name one"
    )


def _peft_scale(config: dict, where: Path) -> Callable[[str, int], float]:
    """PEFT's scaling: lora_alpha / r (or / sqrt(r) with use_rslora), per-module overrides by alpha_pattern /
    rank_pattern (a pattern matches a module name ending in it, as PEFT's get_pattern_key)."""
    if config.get("use_dora"):
        raise UsageError(f"{str(where)!r}: DoRA adapters (use_dora) are not supported; only plain LoRA")
    try:
        r_default = int(config.get("r", 8))
        alpha_default = float(config.get("lora_alpha", 8))
        rank_pattern = {str(k): int(v) for k, v in (config.get("rank_pattern") or {}).items()}
        alpha_pattern = {str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()}
    except (TypeError, ValueError) as e:
        raise UsageError(f"{str(where)!r}: bad r / lora_alpha / patterns: {e}") from None
    rslora = bool(config.get("use_rslora", False))

    def pattern(patterns: dict, module: str) -> str | None:
        for key in patterns:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        return None

    def scale(module: str, rank: int) -> float:
        rk, ak = pattern(rank_pattern, module), pattern(alpha_pattern, module)
        r = rank_pattern[rk] if rk is not None else r_default
        alpha = alpha_pattern[ak] if ak is not None else alpha_default
        if r != rank:
            raise UsageError(
                f"{str(where)!r}: module {module!r} has rank {rank} in the weights but r {r} in the config"
            )
        return alpha / (math.sqrt(r) if rslora else r)

    return scale


def read_lora(path: str | Path, cfg: UNet3DConfig, shapes: Mapping[str, tuple[int, ...]]) -> LoraFile:
    """Read a local LoRA file or folder for a UNet with this config whose weights have these shapes."""
    path = Path(path)
    config: dict | None = None
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            config = read_json(path / "adapter_config.json")
        path = weight_file(path)
    elif not path.is_file():
        raise UsageError(f"LoRA {str(path)!r} does not exist")
    raw = read_raw(path)
    names = module_names(cfg)
    digest = sha256_file(path)
    if raw.tensor_list is not None:
        entries = read_list(raw.tensor_list, cfg, names, shapes)
        return LoraFile(path, "cloneofsimo-list", tuple(entries), digest)
    assert raw.tensors is not None
    if not raw.tensors:
        raise UsageError(f"LoRA file {str(path)!r} holds no tensors")
    scale_of = _peft_scale(config, path) if config is not None else None
    family, entries = read_named(raw.tensors, names, scale_of)
    if family == "stable":
        fmt = "webui" if WEBUI_METADATA in raw.metadata else "stable-lora"
    elif family == "kohya":
        fmt = "kohya"
    else:
        fmt = "peft" if config is not None else "diffusers"
    return LoraFile(path, fmt, tuple(entries), digest)
