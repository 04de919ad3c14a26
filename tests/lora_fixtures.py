"""Shared by the LoRA tests: the tiny UNet (ours and diffusers', same weights) and random LoRA pairs by module."""

from __future__ import annotations

import numpy as np
import torch

from t2vrt.config import UNET_PRESETS
from t2vrt.models.random_init import randomize_
from t2vrt.models.unet3d import UNet3D
from t2vrt.models.unet3d_keys import config_to_diffusers, original_to_diffusers

TINY = UNET_PRESETS["tiny"]
CONTEXT_LEN = 77


def tiny_unet(seed: int = 0) -> UNet3D:
    return randomize_(UNet3D(TINY), seed=seed).eval()


def diffusers_unet(sd: dict, guidance: bool = False) -> torch.nn.Module:
    """diffusers' UNet3DConditionModel with these (original-layout) weights, own copies."""
    import diffusers

    kwargs = config_to_diffusers(TINY) | ({"time_cond_proj_dim": 256} if guidance else {})
    ref = diffusers.UNet3DConditionModel(**kwargs)
    weights = {k: v.clone() for k, v in original_to_diffusers(sd, TINY).items()}
    missing, unexpected = ref.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"time_embedding.cond_proj.weight"}
    return ref.eval()


def inputs(b: int = 1, f: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, TINY.in_channels, f, h, w, generator=g)
    timestep = torch.tensor([601.0, 37.0][:b])
    text = torch.randn(b, CONTEXT_LEN, TINY.context_dim, generator=g)
    return latents, timestep, text


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def module_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """diffusers module name -> weight shape, for its Linear / Conv2d / Conv3d modules."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if type(m) in kinds}


def product_pair(shape: tuple[int, ...], rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) in the product layout: up [out, r, 1...], down [r, in, k...]; r clamped to min(in, out)."""
    out, inp = shape[0], shape[1]
    r = min(rank, out, inp)
    up = torch.randn((out, r) + (1,) * (len(shape) - 2), generator=g) * 0.05
    down = torch.randn((r, inp) + tuple(shape[2:]), generator=g) * 0.05
    return up, down


def collapse_by_name(model: torch.nn.Module, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float = 1.0):
    """cloneofsimo's collapse_lora, transcribed: W += scale * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)."""
    with torch.no_grad():
        for name, (up, down) in pairs.items():
            w = model.get_submodule(name).weight
            w += scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    return model
