"""NaN and inf blamed on the stage and the cause that produced them.

Three causes, told apart by looking at what went into the stage:
- an input value: the stage's inputs were already non-finite, or a user value (guidance) made finite inputs overflow
  (UsageError: the user can change it);
- the manifest's schedule: a sampler step turned finite latents and a finite eps into NaN/inf, so the schedule's
  alphas are at fault (checked at load too, by check_schedule);
- the graph: finite inputs in, NaN/inf out of a graph or engine.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from t2vrt.errors import T2VError, UsageError

F32_MAX = float(np.finfo(np.float32).max)


def finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(a).all())


def _peak(a: np.ndarray) -> str:
    vals = np.abs(a[np.isfinite(a)])
    return f"{float(vals.max()):.3g}" if vals.size else "none finite"


def check_graph_output(stage: str, out: np.ndarray, inputs: Mapping[str, np.ndarray], at: str = "") -> np.ndarray:
    """`out` of graph `stage` run on `inputs`; T2VError naming the cause when it holds NaN or inf."""
    if finite(out):
        return out
    bad = [name for name, a in inputs.items() if np.issubdtype(np.asarray(a).dtype, np.floating) and not finite(a)]
    if bad:
        raise T2VError(f"{stage}{at}: its input {bad[0]!r} already holds NaN or inf (from the stage before it)")
    biggest = ", ".join(
        f"{n} {_peak(np.asarray(a))}" for n, a in inputs.items() if np.issubdtype(np.asarray(a).dtype, np.floating)
    )
    raise T2VError(
        f"the {stage} graph produced NaN or inf{at} from finite inputs (largest |input|: {biggest}): "
        f"the bundle's {stage} graph or its engine is numerically broken at this size"
    )


def guidance_sum(cond: np.ndarray, uncond: np.ndarray, scale: float, at: str = "") -> np.ndarray:
    """Classifier-free guidance uncond + scale * (cond - uncond), float32; UsageError when `scale` overflows it."""
    with np.errstate(over="ignore", invalid="ignore"):
        out: np.ndarray = uncond + np.float32(scale) * (cond - uncond)
    if finite(out):
        return out
    raise guidance_overflow(scale, at)


def guidance_overflow(scale: float, at: str = "") -> UsageError:
    """The guided eps went non-finite while the UNet's cond and uncond outputs were finite: the user's scale did it."""
    return UsageError(
        f"guidance {scale:g} overflows float32 in uncond + guidance * (cond - uncond){at}; use a smaller --guidance"
    )


def check_step(x_before: np.ndarray, eps: np.ndarray, x_after: np.ndarray, t: int) -> np.ndarray:
    """A sampler step from finite latents and a finite eps must stay finite; otherwise the schedule is at fault."""
    if finite(x_after):
        return x_after
    if not finite(x_before):
        raise T2VError(f"the latents held NaN or inf before the sampler step at t={t}")
    if not finite(eps):
        raise T2VError(f"the UNet's eps held NaN or inf at t={t}")
    raise T2VError(
        f"the sampler step at t={t} turned finite latents into NaN or inf: the manifest's noise schedule "
        f"(betas / alphas_cumprod at t={t}) is invalid; re-export the bundle"
    )


def check_schedule(betas: object, num_train_timesteps: object, source: str = "the manifest") -> np.ndarray:
    """The manifest's betas: num_train_timesteps finite values in (0, 1), so every alphas_cumprod is in (0, 1)."""
    if (
        isinstance(num_train_timesteps, bool)
        or not isinstance(num_train_timesteps, int)
        or not 2 <= num_train_timesteps <= 100_000
    ):
        raise UsageError(
            f"{source}: schedule num_train_timesteps must be an integer in 2..100000, got {num_train_timesteps!r}"
        )
    try:
        b = np.asarray(betas, dtype=np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"{source}: schedule betas must be a list of numbers") from None
    if b.ndim != 1 or b.shape[0] != num_train_timesteps:
        raise UsageError(
            f"{source}: schedule betas has shape {b.shape}; expected {num_train_timesteps} values "
            f"(one per training timestep)"
        )
    if not finite(b) or not ((b > 0) & (b < 1)).all():
        i = int(np.argmax(~(np.isfinite(b) & (b > 0) & (b < 1))))
        raise UsageError(f"{source}: schedule betas[{i}] = {float(b[i])!r}; every beta must be in (0, 1)")
    acp = np.cumprod(1.0 - b)
    if not (acp > 0).all():
        raise UsageError(f"{source}: schedule betas drive alphas_cumprod to 0; they are not a usable noise schedule")
    return b
