"""The cloneofsimo tensor-list `.pt` (T2V-Turbo, Text-To-Video-Finetuning "cloneofsimo" mode): [up0, down0, up1, ...].

The file carries no names: pair i belongs to the i-th module the injector visited, in diffusers' `named_modules()`
order over the classes it targeted. Which target set a file was trained with is not recorded either, so every set
the trainers offer is tried and the one whose count and every shape fit is taken; none or several -> one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import torch

from t2vrt.config import UNet3DConfig
from t2vrt.errors import UsageError
from t2vrt.lora.entries import LoraEntry
from t2vrt.lora.names import GUIDANCE_EMBED_DIM, GUIDANCE_KEY, LIST_GROUPS, ModuleNames, list_order
from t2vrt.lora.shapes import product_fits


def _candidates() -> list[tuple[str, frozenset[str], bool, bool]]:
    """(label, groups, guidance, linear_only): the whole UNet with and without the guidance embedding (T2V-Turbo has
    it), then every combination of the class groups Text-To-Video-Finetuning / MotionDirector configs name."""
    out = []
    for linear_only in (False, True):
        for guidance in (True, False):
            out.append(("UNet3DConditionModel", frozenset({"UNet3DConditionModel"}), guidance, linear_only))
        for n in range(1, len(LIST_GROUPS) + 1):
            for combo in combinations(LIST_GROUPS, n):
                out.append(("+".join(combo), frozenset(combo), False, linear_only))
    return out


def read_list(
    tensors: list[torch.Tensor], cfg: UNet3DConfig, names: ModuleNames, shapes: Mapping[str, tuple[int, ...]]
) -> list[LoraEntry]:
    if len(tensors) % 2:
        raise UsageError(f"a LoRA tensor list holds (up, down) pairs; this one has an odd length {len(tensors)}")
    pairs = [(tensors[i], tensors[i + 1]) for i in range(0, len(tensors), 2)]
    guidance_shape = (cfg.model_channels, GUIDANCE_EMBED_DIM)
    fits: list[tuple[str, list[str]]] = []
    for label, groups, guidance, linear_only in _candidates():
        order = list_order(cfg, guidance, groups, linear_only)
        if len(order) != len(pairs):
            continue
        targets = [names.to_key[m] for m in order]
        target_shapes = [shapes.get(t, guidance_shape if t == GUIDANCE_KEY else ()) for t in targets]
        if all(product_fits(up, down, s) for (up, down), s in zip(pairs, target_shapes)):
            fits.append((label + (" with the guidance embedding" if guidance else ""), order))
    if not fits:
        raise UsageError(
            f"a LoRA tensor list of {len(pairs)} (up, down) pairs matches no module set of this UNet in count and "
            "shapes (a LoRA for another architecture or config?)"
        )
    if len(fits) > 1 and len({tuple(o) for _, o in fits}) > 1:
        raise UsageError(f"a LoRA tensor list of {len(pairs)} pairs fits several module sets: {[f for f, _ in fits]}")
    order = fits[0][1]
    return [
        LoraEntry(f"[{2 * i}], [{2 * i + 1}] ({m})", names.to_key[m], up, down, 1.0, "product")
        for i, ((up, down), m) in enumerate(zip(pairs, order))
    ]
