"""`t2vrt export MODEL --lora SOURCE[:SCALE] ...`: LoRAs read and checked before any work, merged before tracing.

Every LoRA is resolved (local or hub), read and matched against the UNet's shapes (a meta-device build, no weights)
when the export is planned, so a bad file fails before anything is written. Its record (name, sha256, format, scale)
goes into the UNet's export key and the manifest: a different LoRA never reuses a stale graph or engine.

A LoRA that changes T2V-Turbo's guidance embedding makes a few-step bundle: the embedding is folded into the time
embedding's bias for one w (t2vrt.lora.guidance), and the bundle's defaults become that release's sampler (4 steps,
no classifier-free guidance). MCM's adapters (hub yhzhai/mcm) get diffusers' LCM sampler.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from t2vrt.config import ModelConfig
from t2vrt.errors import UsageError
from t2vrt.lora import LoraFile, LoraSpec, merge_loras, parse_lora_spec, read_lora, resolve_lora
from t2vrt.lora.guidance import DEFAULT_SEED, DEFAULT_W, GuidanceFold, base_cond_proj, fold_guidance
from t2vrt.lora.names import GUIDANCE_EMBED_DIM, GUIDANCE_KEY

FEW_STEP = ("auto", "t2v-turbo", "lcm", "none")
# (sampler, steps, fps) per release: T2V-Turbo's demo 4 steps at 8 fps; MCM's 4 steps at 7 fps.
FEW_STEP_DEFAULTS = {"t2v-turbo": ("t2v-turbo", 4, 8), "lcm": ("lcm", 4, 7)}


@dataclass(frozen=True, eq=False)
class PlannedLora:
    spec: LoraSpec
    lora: LoraFile

    def record(self) -> dict[str, Any]:
        return {
            "name": self.spec.source,
            "file": self.lora.path.name,
            "sha256": self.lora.sha256,
            "format": self.lora.format,
            "scale": self.spec.scale,
            "modules": len(self.lora.entries),
        }


@dataclass(frozen=True, eq=False)
class LoraPlan:
    loras: tuple[PlannedLora, ...]
    fold: GuidanceFold | None  # the guidance embedding folded at a fixed w, when a LoRA changes it
    few_step: str  # "t2v-turbo" | "lcm" | "none"

    def key(self) -> list[Any]:
        """What the UNet graph depends on beyond the checkpoint and its config."""
        return [[p.lora.sha256, p.lora.format, p.spec.scale] for p in self.loras] + [
            self.fold.to_json() if self.fold else None
        ]

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "loras": [p.record() for p in self.loras],
            "guidance_embedding": self.fold.to_json() if self.fold else None,
            "few_step": self.few_step,
        }


def unet_shapes(cfg: ModelConfig, guidance: bool) -> dict[str, tuple[int, ...]]:
    import torch

    from t2vrt.models.unet3d import UNet3D

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UNet3D(cfg.unet).state_dict().items()}
    if guidance:
        shapes[GUIDANCE_KEY] = (cfg.unet.model_channels, GUIDANCE_EMBED_DIM)
    return shapes


def plan_loras(
    sources: tuple[str, ...],
    cfg: ModelConfig,
    few_step: str = "auto",
    guidance_w: float = DEFAULT_W,
    guidance_seed: int = DEFAULT_SEED,
) -> LoraPlan:
    if few_step not in FEW_STEP:
        raise UsageError(f"--few-step must be one of {', '.join(FEW_STEP)}, got {few_step!r}")
    if not math.isfinite(guidance_w) or not 0.0 <= guidance_w <= 50.0:
        raise UsageError(f"--guidance-w must be in 0..50 (T2V-Turbo's demo uses 2-14, default 7.5), got {guidance_w}")
    shapes = unet_shapes(cfg, guidance=True)
    planned = []
    for text in sources:
        spec = parse_lora_spec(text)
        planned.append(PlannedLora(spec, read_lora(resolve_lora(spec), cfg.unet, shapes)))
    needs_guidance = any(p.lora.needs_guidance_embedding for p in planned)
    if few_step == "auto":
        mcm = any(p.spec.source.lower().startswith("yhzhai/mcm") for p in planned)
        few_step = "t2v-turbo" if needs_guidance else "lcm" if mcm else "none"
    fold = GuidanceFold(float(guidance_w), int(guidance_seed)) if needs_guidance else None
    return LoraPlan(tuple(planned), fold, few_step)


def with_few_step_defaults(cfg: ModelConfig, plan: LoraPlan) -> ModelConfig:
    """The bundle's generation defaults for a few-step LoRA: its sampler and steps, one unguided pass per step."""
    if plan.few_step not in FEW_STEP_DEFAULTS:
        return cfg
    sampler, steps, fps = FEW_STEP_DEFAULTS[plan.few_step]
    d = dataclasses.replace(
        cfg.defaults, sampler=sampler, num_inference_steps=steps, guidance_scale=1.0, negative_prompt="", fps=fps
    )
    return dataclasses.replace(cfg, defaults=d)


def apply_loras(unet: Any, plan: LoraPlan, cfg: ModelConfig, progress: Callable[[str], None]) -> None:
    """Merge every LoRA into the UNet module's weights (fp32 deltas), folding the guidance embedding if needed."""
    import torch

    if not plan.loras:
        return
    state = dict(unet.state_dict())
    if plan.fold is not None:
        state[GUIDANCE_KEY] = base_cond_proj(cfg.unet.model_channels, plan.fold.base_seed)
    updated, report = merge_loras(state, [(p.lora, p.spec.scale) for p in plan.loras])
    for name, n, norm in report.per_lora:
        progress(f"LoRA {name}: {n} modules, delta norm {norm:.4g}")
    progress(report.summary())
    if plan.fold is not None:
        merged = {**state, **updated}
        updated.update(fold_guidance(merged, plan.fold.w))
        updated.pop(GUIDANCE_KEY, None)
        progress(
            f"guidance embedding folded into time_embed.0.bias at w {plan.fold.w:g} (base seed {plan.fold.base_seed})"
        )
    with torch.no_grad():
        for key, value in updated.items():
            unet.get_parameter(key).data = value
