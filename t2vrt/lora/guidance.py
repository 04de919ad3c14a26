"""T2V-Turbo's guidance embedding, folded into the time embedding's first bias for a fixed guidance value w.

T2V-Turbo's UNet adds cond_proj(wemb(w)) to the 320-d sinusoidal timestep embedding before time_embedding.linear_1:
    emb = linear_2(silu(linear_1(t_emb + W_cond @ wemb(w))))
For a fixed w this is exactly linear_1 with bias b1 + W1 @ (W_cond @ wemb(w)): the exported UNet keeps its usual
inputs and one pass per step. wemb (from their pipeline's get_w_embedding, after VDM): w' = 1000 w,
f_i = exp(-i ln(10000) / (half - 1)), [sin(w' f) | cos(w' f)], sin first; w as given (no "- 1").

The base W_cond is in no released file: their app builds the UNet with time_cond_proj_dim=256 and loads the base
weights with strict=False, so it is PyTorch's default Linear init U(-1/16, 1/16), drawn afresh each process (their
issue #30: outputs differ between processes). t2vrt draws it once from a recorded seed so a bundle is reproducible,
then adds the LoRA's delta to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from t2vrt.lora.names import GUIDANCE_EMBED_DIM, GUIDANCE_KEY

DEFAULT_W = 7.5  # T2V-Turbo's demo default (range 2-14)
DEFAULT_SEED = 0
BIAS_KEY = "time_embed.0.bias"
WEIGHT_KEY = "time_embed.0.weight"


@dataclass(frozen=True)
class GuidanceFold:
    """What a bundle records: the mode, the w baked in, and how the base cond_proj was drawn."""

    w: float
    base_seed: int
    mode: str = "folded"  # into time_embed.0.bias for this fixed w
    base_init: str = "U(-1/sqrt(256), 1/sqrt(256)) = PyTorch's default Linear init, torch.Generator().manual_seed(seed)"
    reason: str = (
        "T2V-Turbo's released files omit the base time_embedding.cond_proj (their app leaves it at a fresh random "
        "init each run); a fixed seed makes the bundle reproducible"
    )

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "w": self.w,
            "base_seed": self.base_seed,
            "base_init": self.base_init,
            "reason": self.reason,
        }


def w_embedding(w: float, dim: int = GUIDANCE_EMBED_DIM) -> np.ndarray:
    """(dim,) float64: [sin(1000 w f) | cos(1000 w f)], f_i = exp(-i ln(10000) / (dim/2 - 1))."""
    half = dim // 2
    freqs = np.exp(-np.arange(half, dtype=np.float64) * (np.log(10000.0) / (half - 1)))
    args = 1000.0 * float(w) * freqs
    return np.concatenate([np.sin(args), np.cos(args)])


def base_cond_proj(model_channels: int, seed: int = DEFAULT_SEED) -> torch.Tensor:
    """The base W_cond [model_channels, 256], fp32, from the recorded seed."""
    bound = 1.0 / np.sqrt(GUIDANCE_EMBED_DIM)
    g = torch.Generator().manual_seed(int(seed))
    return torch.empty(model_channels, GUIDANCE_EMBED_DIM).uniform_(-bound, bound, generator=g)


def fold_guidance(state: Mapping[str, torch.Tensor], w: float) -> dict[str, torch.Tensor]:
    """{time_embed.0.bias: b1 + W1 @ (W_cond @ wemb(w))} from a state holding W1, b1 and W_cond (GUIDANCE_KEY), in
    float64 then cast back."""
    w_cond = state[GUIDANCE_KEY].double()
    w1, b1 = state[WEIGHT_KEY].double(), state[BIAS_KEY]
    shift = w1 @ (w_cond @ torch.from_numpy(w_embedding(w)))
    return {BIAS_KEY: (b1.double() + shift).to(b1.dtype)}
