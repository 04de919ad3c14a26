"""Consistency samplers for few-step distillations, as pure numpy functions (k-diffusion style): no state, no torch.

A consistency model f(x_t, t) maps any point of the noising trajectory straight to its clean end (Song et al. 2023,
"Consistency Models", eq. (3): f(x, t) = c_skip(t) x + c_out(t) F(x, t)). Latent consistency models (Luo et al.
2023, "Latent Consistency Models", eq. (9)) keep an eps-predicting UNet as F through the DDIM x0 estimate, and sample
in a few steps by alternating "jump to x0" with "re-noise to the next timestep" (Consistency Models, Algorithm 1).

Two released schedules over the same step:
- "lcm": diffusers' LCMScheduler, as MCM (yhzhai/mcm) runs it: timestep_scaling 4.
- "t2v-turbo": T2V-Turbo's T2VTurboScheduler (Ji4chenLi/t2v-turbo): its own spacing, timestep_scaling 10 (t / 0.1).
Both take the video from the last step's denoised estimate, not from a re-noised sample.

The noise schedule (alphas_cumprod) is an argument, as in `schedulers.py`: the runtime passes its float64 one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from t2vrt.errors import UsageError

MAX_STEPS = 8  # the distillations are trained and released for 1..8 steps
ORIGINAL_STEPS = 50  # the distillation's skipping schedule: every T / 50 = 20th training timestep
SIGMA_DATA = 0.5


@dataclass(frozen=True)
class ConsistencySampler:
    """How one release samples: its timestep spacing and its boundary-condition time scaling."""

    name: str
    timestep_scaling: float
    description: str

    def timesteps(self, num_train_timesteps: int, steps: int) -> np.ndarray:
        if self.name == "t2v-turbo":
            return t2v_turbo_timesteps(num_train_timesteps, steps)
        return lcm_timesteps(num_train_timesteps, steps)


CONSISTENCY_SAMPLERS: dict[str, ConsistencySampler] = {
    "lcm": ConsistencySampler("lcm", 4.0, "diffusers' LCMScheduler as MCM runs it (timestep_scaling 4)"),
    "t2v-turbo": ConsistencySampler("t2v-turbo", 10.0, "T2V-Turbo's scheduler (timestep_scaling 10)"),
}


def consistency_sampler(name: str) -> ConsistencySampler:
    if name not in CONSISTENCY_SAMPLERS:
        raise UsageError(f"unknown consistency sampler {name!r}; choose one of: {', '.join(CONSISTENCY_SAMPLERS)}")
    return CONSISTENCY_SAMPLERS[name]


def _check_steps(steps: int, num_train_timesteps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise UsageError(f"steps must be an integer, got {steps!r}")
    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"a consistency sampler runs 1 to {MAX_STEPS} steps, got {steps}")
    if num_train_timesteps < ORIGINAL_STEPS:
        raise ValueError(f"num_train_timesteps {num_train_timesteps} is below the {ORIGINAL_STEPS}-step schedule")


def _origin_timesteps(num_train_timesteps: int) -> np.ndarray:
    """The distillation's training timesteps, ascending: k * (T // 50) - 1 for k = 1..50 (19, 39, ..., 999)."""
    c = num_train_timesteps // ORIGINAL_STEPS
    return np.arange(1, ORIGINAL_STEPS + 1, dtype=np.int64) * c - 1


def lcm_timesteps(num_train_timesteps: int, steps: int) -> np.ndarray:
    """diffusers' LCMScheduler.set_timesteps: the origin schedule descending, taken at floor(linspace(0, 50, n)).

    4 -> 999, 759, 499, 259; 8 -> 999, 879, 759, 639, 499, 379, 259, 139.
    """
    _check_steps(steps, num_train_timesteps)
    origin = _origin_timesteps(num_train_timesteps)[::-1]
    idx = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return origin[idx].copy()


def t2v_turbo_timesteps(num_train_timesteps: int, steps: int) -> np.ndarray:
    """T2VTurboScheduler.set_timesteps: every (50 // n)-th origin timestep from the top, the first n of them.

    4 -> 999, 759, 519, 279; 8 -> 999, 879, 759, 639, 519, 399, 279, 159.
    """
    _check_steps(steps, num_train_timesteps)
    origin = _origin_timesteps(num_train_timesteps)
    return origin[:: -(ORIGINAL_STEPS // steps)][:steps].copy()


def boundary_scalings(t: int, timestep_scaling: float) -> tuple[float, float]:
    """(c_skip, c_out) at discrete timestep t (LCM eq. (9), with sigma_data 0.5 and time scaled by timestep_scaling).

    c_skip = s^2 / ((k t)^2 + s^2), c_out = k t / sqrt((k t)^2 + s^2): c_skip(0) = 1, c_out(0) = 0, so f(x, 0) = x
    (Consistency Models' boundary condition); at t = 999 c_skip is ~1e-8, the estimate is almost all x0.
    """
    scaled = float(t) * float(timestep_scaling)
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / float(np.sqrt(scaled**2 + SIGMA_DATA**2))
    return c_skip, c_out


def consistency_step(
    x: np.ndarray,
    eps: np.ndarray,
    t: int,
    t_next: int | None,
    alphas_cumprod: np.ndarray,
    timestep_scaling: float,
    noise: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One step x_t -> (x_{t_next}, denoised). t_next None = the last step: x_next is the denoised estimate itself.

    `noise` (standard normal, x's shape, drawn by the caller) re-noises the estimate to t_next; unused on the last step.
    """
    if x.shape != eps.shape:
        raise ValueError(f"x {x.shape} and eps {eps.shape} must have the same shape")
    if t_next is not None and not int(t_next) < int(t):
        raise ValueError(f"the next timestep must come before the current one: t={t}, t_next={t_next}")
    n = len(alphas_cumprod)
    if not 0 <= int(t) < n or (t_next is not None and not 0 <= int(t_next) < n):
        raise ValueError(f"timesteps {t}, {t_next} must lie in the schedule 0..{n - 1}")
    dtype = np.result_type(x, eps)
    a_t = float(alphas_cumprod[int(t)])
    # DDIM eq. (12), the x0 estimate from eps: (x_t - sqrt(1 - a_t) eps) / sqrt(a_t).
    x0 = (x - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
    # Consistency Models eq. (3) / LCM eq. (9): the boundary-conditioned consistency function.
    c_skip, c_out = boundary_scalings(int(t), timestep_scaling)
    denoised = (c_out * x0 + c_skip * x).astype(dtype, copy=False)
    if t_next is None:
        return denoised, denoised
    if noise is None or noise.shape != x.shape:
        got = None if noise is None else noise.shape
        raise ValueError(f"a step before the last needs noise of shape {x.shape}, got {got}")
    a_next = float(alphas_cumprod[int(t_next)])
    # Consistency Models Algorithm 1, re-noising: x_next = sqrt(a_next) denoised + sqrt(1 - a_next) z (DDPM eq. (4)).
    x_next = np.sqrt(a_next) * denoised + np.sqrt(1.0 - a_next) * noise
    return x_next.astype(dtype, copy=False), denoised


def consistency_sample(
    denoise: Callable[[np.ndarray, int], np.ndarray],
    x: np.ndarray,
    timesteps: Sequence[int] | np.ndarray,
    alphas_cumprod: np.ndarray,
    *,
    timestep_scaling: float,
    noises: Sequence[np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
    callback: Callable[[int, int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """The whole loop; returns the last denoised estimate (what the video is decoded from).

    `denoise(x, t)` gives eps: one UNet pass, no classifier-free guidance (a guidance value, if any, is a UNet input
    bound inside it). The noise between steps is `noises[i]` for the step after step i (len(timesteps) - 1 arrays),
    or drawn from `rng` (standard normal in float64, cast to x's dtype); one of them is needed for 2+ steps.
    `callback(i, t, denoised)` runs after each step.
    """
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps is empty")
    if noises is not None and len(noises) != len(ts) - 1:
        raise ValueError(f"{len(ts)} steps need {len(ts) - 1} noise arrays, got {len(noises)}")
    if len(ts) > 1 and noises is None and rng is None:
        raise ValueError("a multi-step consistency loop needs noises or a numpy Generator (rng)")
    denoised = x
    for i, t in enumerate(ts):
        t_next = ts[i + 1] if i + 1 < len(ts) else None
        noise = None
        if t_next is not None:
            noise = noises[i] if noises is not None else rng.standard_normal(x.shape).astype(x.dtype)  # type: ignore[union-attr]
        x, denoised = consistency_step(x, denoise(x, t), t, t_next, alphas_cumprod, timestep_scaling, noise)
        if callback is not None:
            callback(i, t, denoised)
    return denoised
