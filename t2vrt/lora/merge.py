"""Merging LoRAs into a UNet state dict (original layout): W += user_scale * format_scale * delta, deltas in fp32.

Every entry of every LoRA is checked against its target before anything changes, so a bad file leaves the weights
as they were. The result is a dict of the changed tensors (new tensors; the inputs, possibly memory-mapped, are not
written) and a report: modules changed and the Frobenius norm of the total change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from t2vrt.errors import UsageError
from t2vrt.lora.entries import LoraFile
from t2vrt.lora.names import GUIDANCE_KEY
from t2vrt.lora.shapes import delta, fits


@dataclass(frozen=True)
class MergeReport:
    modules: int  # (LoRA, module) pairs applied
    delta_norm: float  # || sum of all deltas ||_F over the changed weights, fp32
    per_lora: tuple[tuple[str, int, float], ...]  # (name, modules, delta norm) per LoRA

    def summary(self) -> str:
        return f"LoRA: {self.modules} modules changed, total delta norm {self.delta_norm:.4g}"


def check_entries(lora: LoraFile, state: Mapping[str, torch.Tensor]) -> None:
    """Every key lands on a weight of the right shape, with finite values; else one line naming the key."""
    seen: set[str] = set()
    for e in lora.entries:
        if e.target not in state:
            if e.target == GUIDANCE_KEY:
                raise UsageError(
                    f"LoRA key {e.key!r} changes the guidance embedding (time_embedding.cond_proj), which this UNet "
                    "lacks: build it with the guidance embedding (a T2V-Turbo LoRA)"
                )
            raise UsageError(f"LoRA key {e.key!r} targets {e.target!r}, which this UNet does not have")
        if e.target in seen:
            raise UsageError(f"LoRA key {e.key!r}: a second entry for {e.target!r} in the same file")
        seen.add(e.target)
        shape = tuple(state[e.target].shape)
        if not fits(e.rule, e.up, e.down, shape):
            raise UsageError(
                f"LoRA key {e.key!r}: up {tuple(e.up.shape)} / down {tuple(e.down.shape)} do not fit "
                f"{e.target!r} of shape {shape} ({e.rule} rule)"
            )
        for t in (e.up, e.down):
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise UsageError(f"LoRA key {e.key!r} holds non-finite or non-float values")


def merge_loras(
    state: Mapping[str, torch.Tensor], loras: Sequence[tuple[LoraFile, float]]
) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """(updated tensors by key, report) for [(lora, user scale), ...]; `state` itself is not modified."""
    for lora, _ in loras:
        check_entries(lora, state)
    sums: dict[str, torch.Tensor] = {}
    per_lora = []
    for lora, user_scale in loras:
        sq = 0.0
        for e in lora.entries:
            shape = tuple(state[e.target].shape)
            d = delta(e.rule, e.up, e.down, shape) * float(user_scale * e.scale)  # fp32
            sq += float(d.double().square().sum())
            sums[e.target] = sums[e.target] + d if e.target in sums else d
        per_lora.append((lora.path.name, len(lora.entries), math.sqrt(sq)))
    total = math.sqrt(sum(float(d.double().square().sum()) for d in sums.values()))
    updated = {k: (state[k].float() + d).to(state[k].dtype) for k, d in sums.items()}
    modules = sum(n for _, n, _ in per_lora)
    return updated, MergeReport(modules, total, tuple(per_lora))


def merge_into_module(module: torch.nn.Module, loras: Sequence[tuple[LoraFile, float]]) -> MergeReport:
    """Merge into a module's parameters (replacing each changed parameter's data)."""
    state = dict(module.state_dict(keep_vars=False))
    updated, report = merge_loras(state, loras)
    with torch.no_grad():
        for key, value in updated.items():
            module.get_parameter(key).data = value
    return report
