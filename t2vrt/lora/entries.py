"""What every LoRA reader produces: per target module an (up, down) pair, its format scaling and merge rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2vrt.lora.names import GUIDANCE_KEY

# "product": W += s * (up.flatten(1) @ down.flatten(1)).reshape(W.shape) (PEFT, diffusers, kohya, cloneofsimo).
# "stable":  loralib's layout (Text-To-Video-Finetuning stable_lora, sd-webui-text2video): A [r k, in k],
#            B [out k, r k]; Conv2d (B@A).view(W.shape); Conv3d (k,1,1) mean over one axis of (B@A).view(o, i, k, k, 1).
RULES = ("product", "stable")


@dataclass(frozen=True, eq=False)
class LoraEntry:
    key: str  # the file's own name for this module (for error messages)
    target: str  # the original-layout weight key it changes, e.g. "input_blocks.1.1.proj_in.weight"
    up: torch.Tensor  # B
    down: torch.Tensor  # A
    scale: float  # the format's scaling (alpha / rank), before the user's scale
    rule: str = "product"


@dataclass(frozen=True, eq=False)
class LoraFile:
    """One LoRA as read: its format, where it came from, and its entries (one per target module)."""

    path: Path  # the weight file
    format: str  # peft | diffusers | cloneofsimo-list | stable-lora | webui | kohya
    entries: tuple[LoraEntry, ...]
    sha256: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def needs_guidance_embedding(self) -> bool:
        """True for T2V-Turbo: the LoRA changes time_embedding.cond_proj, so the UNet must have one."""
        return any(e.target == GUIDANCE_KEY for e in self.entries)
