"""The samplers, declared once: name -> timestep schedule, loop, and which options apply.

The CLI's choices, the pipeline, option checks, the bench and the manifest's defaults all read SAMPLERS. A new sampler
is pure step functions (like t2vrt.runtime.schedulers) and one `SamplerDef` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from t2vrt.errors import UsageError
from t2vrt.runtime import consistency, schedulers

EpsModel = Callable[[np.ndarray, int], np.ndarray]  # (x, t) -> eps: guidance and the backend live inside


class Callback(Protocol):
    def __call__(self, i: int, t: int, x: np.ndarray, /) -> None: ...


class Loop(Protocol):
    def __call__(
        self,
        eps: EpsModel,
        x: np.ndarray,
        timesteps: Sequence[int],
        alphas_cumprod: np.ndarray,
        *,
        eta: float,
        rng: np.random.Generator | None,
        callback: Callback | None,
    ) -> np.ndarray: ...


def _ddim_loop(
    eps: EpsModel,
    x: np.ndarray,
    timesteps: Sequence[int],
    alphas_cumprod: np.ndarray,
    *,
    eta: float,
    rng: np.random.Generator | None,
    callback: Callback | None,
) -> np.ndarray:
    """DDIM over the schedule; eta > 0 draws its noise per step from `rng` (float64 normal, cast to x's dtype)."""
    if eta > 0 and rng is None:
        raise ValueError("eta > 0 needs a numpy Generator (rng) for the step noise")
    ts = [int(t) for t in timesteps]
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else None
        e = eps(x, t)
        noise = rng.standard_normal(x.shape).astype(x.dtype) if eta > 0 and rng is not None else None
        x = schedulers.ddim_step(x, e, t, t_prev, alphas_cumprod, eta=eta, noise=noise)
        if callback is not None:
            callback(i, t, x)
    return x


def _dpmpp_2m_loop(
    eps: EpsModel,
    x: np.ndarray,
    timesteps: Sequence[int],
    alphas_cumprod: np.ndarray,
    *,
    eta: float,
    rng: np.random.Generator | None,
    callback: Callback | None,
) -> np.ndarray:
    """DPM-Solver++(2M): each step carries the previous data prediction and timestep."""
    ts = [int(t) for t in timesteps]
    prev_x0: np.ndarray | None = None
    t_last: int | None = None
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else None
        x, prev_x0 = schedulers.dpmpp_2m_step(x, eps(x, t), t, t_prev, prev_x0, t_last, alphas_cumprod)
        t_last = t
        if callback is not None:
            callback(i, t, x)
    return x


def _consistency_loop(name: str) -> Loop:
    """A consistency sampler (t2vrt.runtime.consistency): one unguided UNet pass per step, noise between steps from
    `rng`; returns the last denoised estimate (what the video is decoded from). `callback` sees each estimate."""

    def loop(eps, x, timesteps, alphas_cumprod, *, eta, rng, callback):  # type: ignore[no-untyped-def]
        if rng is None and len(timesteps) > 1:
            raise ValueError(f"the {name} sampler needs a numpy Generator (rng) for the noise between steps")
        s = consistency.consistency_sampler(name)
        return consistency.consistency_sample(
            eps, x, timesteps, alphas_cumprod, timestep_scaling=s.timestep_scaling, rng=rng, callback=callback
        )

    return loop


@dataclass(frozen=True)
class SamplerDef:
    name: str
    doc: str
    timesteps: Callable[[int, int], np.ndarray]  # (num_train_timesteps, steps) -> descending int64 timesteps
    loop: Loop
    stochastic: bool = False  # takes eta > 0 (and then draws noise per step)
    max_steps: int | None = None  # None: as many as the schedule allows
    guided: bool = True  # False: a distilled few-step sampler, one unguided pass per step (no CFG, no negative prompt)

    def steps_range(self, num_train_timesteps: int) -> tuple[int, int]:
        """At most T - 1 steps of T training timesteps: DDIM's offset 1 puts a T-th step at t = T (past the end) and
        DPM-Solver++'s rounded linspace repeats a timestep past T - 1 (tests/test_safety_ranges.py tries every n)."""
        return 1, min(self.max_steps or num_train_timesteps - 1, num_train_timesteps - 1)


SAMPLERS: dict[str, SamplerDef] = {
    s.name: s
    for s in (
        SamplerDef(
            "ddim",
            "DDIM (the original's and diffusers' default; eta > 0 adds noise)",
            lambda n, steps: schedulers.ddim_timesteps(n, steps),
            _ddim_loop,
            stochastic=True,
        ),
        SamplerDef(
            "dpm++",
            "DPM-Solver++(2M): as good in fewer steps (20-25)",
            schedulers.dpmpp_2m_timesteps,
            _dpmpp_2m_loop,
        ),
        *(
            SamplerDef(
                c.name,
                f"consistency sampler, {c.description}: 1-8 steps, for few-step LoRAs (T2V-Turbo, MCM)",
                c.timesteps,
                _consistency_loop(c.name),
                max_steps=consistency.MAX_STEPS,
                guided=False,
            )
            for c in consistency.CONSISTENCY_SAMPLERS.values()
        ),
    )
}


def get(name: str) -> SamplerDef:
    if name not in SAMPLERS:
        raise UsageError(f"scheduler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]


def sample(
    eps: EpsModel,
    x: np.ndarray,
    timesteps: Sequence[int] | np.ndarray,
    alphas_cumprod: np.ndarray,
    *,
    sampler: str = "ddim",
    eta: float = 0.0,
    rng: np.random.Generator | None = None,
    callback: Callback | None = None,
) -> np.ndarray:
    """Run the whole loop: x <- step(x, eps(x, t), t, next t) over `timesteps`; returns the final x.

    `eps(x, t)` is an eps predictor (classifier-free guidance and the backend live inside it, see
    t2vrt.runtime.denoiser). `callback(i, t, x)` runs after each step (progress bars, previews).
    """
    s = get(sampler)
    if eta < 0:
        raise UsageError(f"eta must be >= 0, got {eta}")
    if eta > 0 and not s.stochastic:
        raise UsageError(f"eta {eta} needs the ddim sampler ({sampler} is deterministic); use eta 0")
    return s.loop(eps, x, [int(t) for t in timesteps], alphas_cumprod, eta=eta, rng=rng, callback=callback)
