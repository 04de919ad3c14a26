"""LoRA files that name their modules: PEFT / diffusers, Text-To-Video-Finetuning stable_lora, sd-webui-text2video,
kohya. Each key is matched against the file formats' patterns, its module name against the UNet's names table."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch

from t2vrt.errors import UsageError
from t2vrt.lora.entries import LoraEntry
from t2vrt.lora.names import ModuleNames

# (family, pattern, role). The module name is group "m"; the old attention-processor form names the attention and the
# projection separately ("...attn1.processor.to_out_lora.down.weight" -> "...attn1.to_out.0").
_PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (fam, re.compile(rx), role)
    for fam, rx, role in (
        ("kohya", r"^(?P<m>lora_unet_.+)\.lora_down\.weight$", "down"),
        ("kohya", r"^(?P<m>lora_unet_.+)\.lora_up\.weight$", "up"),
        ("kohya", r"^(?P<m>lora_unet_.+)\.alpha$", "alpha"),
        ("diffusers", r"^(?P<m>.+)\.lora_A\.weight$", "down"),
        ("diffusers", r"^(?P<m>.+)\.lora_B\.weight$", "up"),
        ("diffusers", r"^(?P<a>.+)\.processor\.(?P<p>to_q|to_k|to_v|to_out)_lora\.down\.weight$", "down"),
        ("diffusers", r"^(?P<a>.+)\.processor\.(?P<p>to_q|to_k|to_v|to_out)_lora\.up\.weight$", "up"),
        ("diffusers", r"^(?P<m>.+)\.lora\.down\.weight$", "down"),
        ("diffusers", r"^(?P<m>.+)\.lora\.up\.weight$", "up"),
        ("diffusers", r"^(?P<m>.+)\.alpha$", "alpha"),
        ("stable", r"^(?P<m>.+)\.lora_A$", "down"),
        ("stable", r"^(?P<m>.+)\.lora_B$", "up"),
    )
)
_PREFIXES = ("base_model.model.", "unet.")
_UNSUPPORTED = (
    (re.compile(r"(^|\.)(lora_te\d?_|text_encoder\.|text_model\.|te\.)"), "text-encoder LoRA keys are not supported"),
    (re.compile(r"(hada_|lokr_|lora_mid|\.oft_|lora_magnitude_vector|dora_scale)"), "LyCORIS / DoRA / OFT layers"),
    (re.compile(r"lora_embedding_[AB]"), "embedding LoRA layers"),
)


def _module_of(key: str) -> tuple[str, str, str] | None:
    """(family, module name, role) of a key, or None."""
    for fam, rx, role in _PATTERNS:
        m = rx.match(key)
        if m:
            if "a" in m.groupdict():
                proj = m.group("p")
                return fam, f"{m.group('a')}.{proj}{'.0' if proj == 'to_out' else ''}", role
            return fam, m.group("m"), role
    return None


def _strip(module: str) -> str:
    for prefix in _PREFIXES:
        module = module.removeprefix(prefix)
    return module


def _check_supported(key: str) -> None:
    for rx, what in _UNSUPPORTED:
        if rx.search(key):
            raise UsageError(f"LoRA key {key!r}: {what}; t2vrt merges plain LoRA on the UNet only")


def read_named(
    tensors: Mapping[str, torch.Tensor],
    names: ModuleNames,
    scale_of: Callable[[str, int], float] | None = None,  # (module name as in the file, rank) -> alpha / rank
) -> tuple[str, list[LoraEntry]]:
    """Returns (family, entries): family 'kohya', 'diffusers' (PEFT-style names) or 'stable' (loralib names)."""
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    families: set[str] = set()
    for key, value in tensors.items():
        _check_supported(key)
        found = _module_of(key)
        if found is None:
            raise UsageError(f"LoRA key {key!r} is no LoRA weight this reader knows (lora_A/B, lora.down/up, alpha)")
        fam, module, role = found
        families.add(fam)
        module = module if fam == "kohya" else _strip(module)
        groups.setdefault(module, {})[role] = (key, value)
    if len(families) > 1:
        raise UsageError(f"LoRA file mixes key styles {sorted(families)}; expected one format")
    family = families.pop() if families else "diffusers"
    table = names.kohya if family == "kohya" else names.to_key
    unknown = [
        parts.get("down", parts.get("up", next(iter(parts.values()))))[0]
        for module, parts in groups.items()
        if module not in table
    ]
    if unknown:
        raise UsageError(
            f"LoRA key {unknown[0]!r} matches no module of this UNet ({len(unknown)} of {len(groups)} modules unknown"
            + ("; a LoRA for another architecture?)" if len(unknown) * 2 > len(groups) else ")")
        )
    entries = []
    for module, parts in groups.items():
        if "up" not in parts or "down" not in parts:
            have, need = ("up", "down") if "up" in parts else ("down", "up")
            if have not in parts:
                raise UsageError(f"LoRA key {parts['alpha'][0]!r} has no weights beside it")
            raise UsageError(f"LoRA key {parts[have][0]!r} has no matching {need} weight")
        down_key, down = parts["down"]
        rank = int(down.shape[0]) if down.ndim >= 1 else 0
        if family == "stable":
            scale = 1.0  # loralib with lora_alpha = r, as Text-To-Video-Finetuning trains it
        elif "alpha" in parts:
            alpha = parts["alpha"][1]
            if alpha.numel() != 1 or not math.isfinite(float(alpha.reshape(-1)[0])):
                raise UsageError(f"LoRA key {parts['alpha'][0]!r} must hold one finite number")
            scale = float(alpha.reshape(-1)[0]) / max(rank, 1)
        elif scale_of is not None:
            scale = scale_of(module, rank)
        else:
            scale = 1.0  # no alpha stored: alpha = rank
        rule = "stable" if family == "stable" else "product"
        entries.append(LoraEntry(down_key, table[module], parts["up"][1], down, scale, rule))
    return family, entries
