"""The guided denoiser: (x, t) -> eps with classifier-free guidance, over any UNet call.

One object owns guidance and its batching, used by the pipeline, the export's fp16 gate and the PyTorch baseline
(array-agnostic: numpy or torch, by the `concat` it is given). It is the seam where step caching and guidance
embeddings go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import numpy as np

A = TypeVar("A")  # an array type: numpy.ndarray, or torch.Tensor in the baseline


def guide(eps_cond: A, eps_uncond: A, scale: float) -> A:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6 in eps form): uncond + g * (cond - uncond)."""
    return cast(A, eps_uncond + scale * (eps_cond - eps_uncond))  # type: ignore[operator]


@dataclass
class GuidedDenoiser(Generic[A]):
    """eps(x, t) for one video (batch 1), conditioned on `cond` and, when guided, pushed away from `uncond`.

    batch 2 runs cond and uncond in one UNet call (x stacked twice); batch 1 runs two calls with half the
    activations. Both give the same eps.
    """

    unet: Callable[[A, float, A], A]  # (latents (b, ...), timestep, text embeddings (b, L, C)) -> eps
    cond: A  # (1, L, C)
    uncond: A | None  # (1, L, C), None = unguided (one pass per step)
    scale: float = 1.0
    batch: int = 2
    concat: Callable[[Sequence[A]], A] = np.concatenate  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.batch not in (1, 2):
            raise ValueError(f"guidance batch must be 1 or 2, got {self.batch}")

    @property
    def passes_per_step(self) -> int:
        """UNet calls per step (at batch 2, one call of two videos)."""
        return 1 if self.uncond is None or self.batch == 2 else 2

    def __call__(self, x: A, t: float) -> A:
        if self.uncond is None:
            return self.unet(x, t, self.cond)
        if self.batch == 2:
            both = self.unet(self.concat([x, x]), t, self.concat([self.cond, self.uncond]))
            return guide(cast(A, both[:1]), cast(A, both[1:]), self.scale)  # type: ignore[index]
        return guide(self.unet(x, t, self.cond), self.unet(x, t, self.uncond), self.scale)
