"""Sampler steps as pure numpy functions over arrays of any rank (k-diffusion style): no state, no torch.

The noise schedule is computed in float64 (as the original release does); the arrays being sampled keep their own
dtype (a float32 latent stays float32; a float64 one gives float64 results, which is what the parity tests use).

Two samplers (registered, with their loops, in t2vrt.runtime.samplers):
- DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), the original's and diffusers' default.
- DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++"), the fewer-steps option, matching diffusers'
  DPMSolverMultistepScheduler as users of this model get it (see `dpmpp_2m_timesteps`).

Every step takes its previous timestep from the schedule (the next entry, or None after the last), never from
arithmetic on the config: diffusers' DDIM derives it as `t - T // steps`, which is wrong for spacings other than
"leading" (diffusers issues #9261, #11347, #12633).
"""

from __future__ import annotations

import numpy as np

from t2vrt.errors import UsageError


def scaled_linear_betas(beta_start: float = 0.00085, beta_end: float = 0.012, n: int = 1000) -> np.ndarray:
    """The latent-diffusion "scaled linear" schedule: betas whose square roots are evenly spaced (float64)."""
    if n < 1:
        raise ValueError(f"number of training timesteps must be >= 1, got {n}")
    return np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), n, dtype=np.float64) ** 2


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) (DDPM eq. 4's notation), float64."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def _check_steps(steps: int, num_train_timesteps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise UsageError(f"steps must be an integer, got {steps!r}")
    if not 1 <= steps <= num_train_timesteps:
        raise UsageError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")


def ddim_timesteps(num_train_timesteps: int, steps: int, offset: int = 1) -> np.ndarray:
    """DDIM's "leading" spacing, descending: k * (T // steps) + offset for k = steps-1 .. 0 (int64).

    50 of 1000 -> 981, 961, ..., 21, 1, as the original (`1 + arange(0, T, T // steps)`) and diffusers
    (timestep_spacing "leading", steps_offset 1). Where `steps` does not divide T the original makes one step more
    than asked (arange overshoots); this follows diffusers and gives exactly `steps`.
    """
    _check_steps(steps, num_train_timesteps)
    ratio = num_train_timesteps // steps
    ts = np.arange(steps, dtype=np.int64)[::-1] * ratio + offset
    if ts[0] >= num_train_timesteps:
        raise UsageError(f"offset {offset} puts the first timestep {ts[0]} past the last ({num_train_timesteps - 1})")
    return ts.copy()


def dpmpp_2m_timesteps(num_train_timesteps: int, steps: int) -> np.ndarray:
    """DPM-Solver++(2M)'s schedule: round(linspace(0, T-1, steps+1)), descending, without the final 0 (int64).

    This is diffusers' "linspace" spacing, which is what `DPMSolverMultistepScheduler.from_config(pipe.scheduler.
    config)` gives users of damo-vilab/text-to-video-ms-1.7b: the hub's scheduler_config.json (written by diffusers
    0.15) has no `timestep_spacing` key, so from_config drops DDIM's default "leading" and the DPM scheduler uses
    its own default, "linspace" (25 steps -> 999, 959, ..., 40); `steps_offset` is ignored by that spacing.
    """
    _check_steps(steps, num_train_timesteps)
    # np.round is round-half-to-even, as diffusers' `.round()` on the same float64 linspace.
    ts = np.linspace(0, num_train_timesteps - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if np.any(np.diff(ts) >= 0):
        raise UsageError(f"steps {steps} repeats timesteps with DPM-Solver++; use at most {num_train_timesteps - 1}")
    return ts.copy()


def _acp(alphas_cumprod: np.ndarray, t: int) -> float:
    if not 0 <= int(t) < len(alphas_cumprod):
        raise ValueError(f"timestep {t} is outside the schedule 0..{len(alphas_cumprod) - 1}")
    return float(alphas_cumprod[int(t)])


def _check_pair(x: np.ndarray, eps: np.ndarray, t: int, t_prev: int | None) -> None:
    if x.shape != eps.shape:
        raise ValueError(f"x {x.shape} and eps {eps.shape} must have the same shape")
    if t_prev is not None and not int(t_prev) < int(t):
        raise ValueError(f"the previous timestep must come before the current one: t={t}, t_prev={t_prev}")


def ddim_step(
    x: np.ndarray,
    eps: np.ndarray,
    t: int,
    t_prev: int | None,
    alphas_cumprod: np.ndarray,
    eta: float = 0.0,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """One DDIM update x_t -> x_{t_prev}.

    t_prev is the next entry of the timestep schedule, or None after the last step, where alpha_bar_prev is
    alphas_cumprod[0] (the original's clamp to 0; diffusers' set_alpha_to_one=False).
    eta > 0 adds sigma * noise, `noise` being standard normal of x's shape, drawn by the caller.
    """
    _check_pair(x, eps, t, t_prev)
    if eta < 0:
        raise UsageError(f"eta must be >= 0, got {eta}")
    a_t = _acp(alphas_cumprod, t)
    a_prev = float(alphas_cumprod[0]) if t_prev is None else _acp(alphas_cumprod, t_prev)

    # DDIM eq. (12), the predicted x_0: (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t).
    x0 = (x - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
    # DDIM eq. (16): sigma_t(eta) = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev).
    sigma = eta * float(np.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)))
    # DDIM eq. (12): x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma^2) * eps + sigma * noise.
    x_prev = np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev - sigma**2) * eps
    if eta > 0:
        if noise is None or noise.shape != x.shape:
            got = None if noise is None else noise.shape
            raise ValueError(f"eta > 0 needs noise of shape {x.shape}, got {got}")
        x_prev = x_prev + sigma * noise
    return x_prev.astype(np.result_type(x, eps), copy=False)


def dpmpp_2m_step(
    x: np.ndarray,
    eps: np.ndarray,
    t: int,
    t_prev: int | None,
    prev_x0: np.ndarray | None,
    t_last: int | None,
    alphas_cumprod: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One DPM-Solver++(2M) update x_t -> x_{t_prev}; returns (x_prev, x0), x0 to pass as the next prev_x0.

    prev_x0 and t_last are the previous step's data prediction and timestep, None at the first step (which is
    then first order, i.e. DDIM). t_prev None = the last step: the final sigma is zero, so the update returns the
    data prediction itself. This is diffusers' DPMSolverMultistepScheduler with algorithm_type "dpmsolver++",
    solver_order 2, solver_type "midpoint", final_sigmas_type "zero", lower_order_final True (which, at order 2,
    only affects the last step, already first order because of the zero final sigma), no thresholding, no Karras
    sigmas, epsilon prediction.
    """
    _check_pair(x, eps, t, t_prev)
    if (prev_x0 is None) != (t_last is None):
        raise ValueError("prev_x0 and t_last go together: both None at the first step, both set after")
    a_t = _acp(alphas_cumprod, t)
    alpha_t, sigma_t = np.sqrt(a_t), np.sqrt(1.0 - a_t)
    # Data prediction (DPM-Solver++ eq. (4)): x0 = (x_t - sigma_t * eps) / alpha_t.
    x0 = (x - sigma_t * eps) / alpha_t
    dtype = np.result_type(x, eps)
    if t_prev is None:
        return x0.astype(dtype, copy=False), x0.astype(dtype, copy=False)

    a_p = _acp(alphas_cumprod, t_prev)
    alpha_p, sigma_p = np.sqrt(a_p), np.sqrt(1.0 - a_p)

    def lam(alpha: float, sigma: float) -> float:  # half log-SNR: lambda = log(alpha / sigma)
        return float(np.log(alpha) - np.log(sigma))

    lam_t, lam_p = lam(alpha_t, sigma_t), lam(alpha_p, sigma_p)
    h = lam_p - lam_t
    if prev_x0 is None:
        d = x0  # first order: DPM-Solver++(1), identical to DDIM with eta 0
    else:
        if prev_x0.shape != x.shape:
            raise ValueError(f"prev_x0 {prev_x0.shape} must have x's shape {x.shape}")
        a_l = _acp(alphas_cumprod, t_last)  # type: ignore[arg-type]
        r = (lam_t - lam(np.sqrt(a_l), np.sqrt(1.0 - a_l))) / h
        # Multistep second order (DPM-Solver++ Algorithm 2): D = x0 + (x0 - x0_last) / (2 r).
        d = x0 + (0.5 / r) * (x0 - prev_x0)
    # DPM-Solver++ eq. (9) with the linear data term: x_prev = (sigma_p / sigma_t) x_t - alpha_p (e^{-h} - 1) D.
    x_prev = (sigma_p / sigma_t) * x - (alpha_p * np.expm1(-h)) * d
    return x_prev.astype(dtype, copy=False), x0.astype(dtype, copy=False)
