"""Seeded random weights for every parameter, so tests and the embedded tiny model exercise all paths.

Training-time zero inits (the last temporal conv, the output conv) would make parity tests vacuous; here every
weight is drawn, scaled by 1/sqrt(fan_in) so activations stay O(1) through deep stacks.
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim == 1 and ("norm" in name or "ln" in name.split(".")[-2:][0]) and leaf == "weight":
            value = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)  # norm scales near 1
        elif p.ndim <= 1:
            value = 0.02 * torch.randn(p.shape, generator=gen)  # biases, gains of other 1-D params
        else:
            fan_in = math.prod(p.shape[1:])
            if "embedding" in name:
                fan_in = 1  # lookup tables: unit-ish rows
            value = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
        p.copy_(value.to(p.dtype))
    return module
