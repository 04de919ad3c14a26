"""Each merge rule's shape check and delta, in fp32. A pair that does not fit its target is rejected, never reshaped
into something that happens to have the right number of elements."""

from __future__ import annotations

import torch


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def product_fits(up: torch.Tensor, down: torch.Tensor, target: tuple[int, ...]) -> bool:
    """up [out, r, 1...], down [r, in, k...] onto W [out, in, k...]. A Linear pair fits a 1x1 conv or the original's
    Conv1d [out, in, 1] (trailing unit axes are ignored on both sides)."""
    if up.ndim < 2 or down.ndim < 2 or len(target) < 2:
        return False
    return (
        up.shape[0] == target[0]
        and up.shape[1] == down.shape[0]
        and all(d == 1 for d in up.shape[2:])
        and _strip_ones(tuple(down.shape[1:])) == _strip_ones(tuple(target[1:]))
    )


def product_delta(up: torch.Tensor, down: torch.Tensor, target: tuple[int, ...]) -> torch.Tensor:
    r = down.shape[0]
    return (up.float().reshape(up.shape[0], r) @ down.float().reshape(r, -1)).reshape(target)


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    while t.ndim > 2 and t.shape[-1] == 1:  # sd-webui-text2video squeezes a trailing axis some writers leave
        t = t[..., 0]
    return t


def _stable_kernel(target: tuple[int, ...]) -> int:
    if len(target) == 5:  # Conv3d (k, 1, 1) over frames
        return target[2]
    if len(target) == 4 and target[2] == target[3]:  # square Conv2d
        return target[2]
    return 1  # Linear [out, in] or the original's Conv1d [out, in, 1]


def stable_fits(up: torch.Tensor, down: torch.Tensor, target: tuple[int, ...]) -> bool:
    """loralib layout: A [r k, in k], B [out k, r k] with k the kernel size (1 for Linear)."""
    a, b = _as_matrix(down), _as_matrix(up)
    if a.ndim != 2 or b.ndim != 2 or len(target) < 2 or (len(target) == 5 and target[3:] != (1, 1)):
        return False
    k = _stable_kernel(target)
    return (
        b.shape[0] == target[0] * k
        and a.shape[1] == target[1] * k
        and b.shape[1] == a.shape[0]
        and (a.shape[0] % k == 0)
    )


def stable_delta(up: torch.Tensor, down: torch.Tensor, target: tuple[int, ...]) -> torch.Tensor:
    delta = _as_matrix(up).float() @ _as_matrix(down).float()  # (out k, in k)
    if len(target) == 5:
        k = target[2]
        # Text-To-Video-Finetuning's Conv3d: view as (out, in, k, k, 1), mean over the second kernel axis.
        return delta.view(target[0], target[1], k, k, 1).mean(dim=-2, keepdim=True)
    return delta.reshape(target)


def fits(rule: str, up: torch.Tensor, down: torch.Tensor, target: tuple[int, ...]) -> bool:
    return (stable_fits if rule == "stable" else product_fits)(up, down, target)


def delta(rule: str, up: torch.Tensor, down: torch.Tensor, target: tuple[int, ...]) -> torch.Tensor:
    return (stable_delta if rule == "stable" else product_delta)(up, down, target)
