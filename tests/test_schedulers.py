"""The numpy samplers against diffusers' DDIMScheduler and DPMSolverMultistepScheduler, configured as the model ships."""

from __future__ import annotations

import numpy as np
import pytest
from support.hub import MS17B_SCHEDULER_CONFIG

from t2vrt.errors import UsageError
from t2vrt.runtime import samplers
from t2vrt.runtime import schedulers as S
from t2vrt.runtime.samplers import sample

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

STEP_COUNTS = (50, 25, 20, 7, 1)
SHAPE = (1, 4, 3, 5, 6)  # (b, c, f, h, w): the samplers must not care about rank

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers vs numpy 2 (__array__ copy)

ACP = S.alphas_cumprod(S.scaled_linear_betas(0.00085, 0.012, 1000))


def _ddim() -> diffusers.DDIMScheduler:
    return diffusers.DDIMScheduler.from_config(MS17B_SCHEDULER_CONFIG)


def _dpm() -> diffusers.DPMSolverMultistepScheduler:
    # Exactly what users do: from_config of the pipeline's DDIM scheduler config.
    return diffusers.DPMSolverMultistepScheduler.from_config(_ddim().config)


def _inject_float64_schedule(sched) -> None:
    """Give diffusers our float64 alphas_cumprod so a comparison isolates the step math from float32 rounding."""
    sched.alphas_cumprod = torch.from_numpy(ACP.copy())
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(ACP[0], dtype=torch.float64)


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    x_init = rng.standard_normal(SHAPE)
    target = 0.8 * np.tanh(rng.standard_normal(SHAPE))

    def eps_fn(x: np.ndarray, t: int) -> np.ndarray:
        # A fixed, nonlinear pseudo-denoiser whose x0 estimate stays O(1), so errors are comparable across steps.
        a = ACP[t]
        x0_hat = 0.7 * target + 0.3 * np.tanh(x * (1.0 - t / 2000.0))
        return (x - np.sqrt(a) * x0_hat) / np.sqrt(1.0 - a)

    return x_init, eps_fn


def _run_diffusers(sched, steps: int, x_init: np.ndarray, eps_fn, noises=None, eta: float = 0.0) -> np.ndarray:
    sched.set_timesteps(steps)
    x = torch.from_numpy(x_init.copy())
    for i, t in enumerate(sched.timesteps):
        eps = torch.from_numpy(eps_fn(x.numpy(), int(t)))
        kwargs = {}
        if noises is not None:
            kwargs = {"eta": eta, "variance_noise": torch.from_numpy(noises[i])}
        x = sched.step(eps, t, x, **kwargs).prev_sample
    return x.numpy()


def test_schedule_matches_diffusers_and_original():
    betas = S.scaled_linear_betas(0.00085, 0.012, 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    # The original: linspace(sqrt(0.00085), sqrt(0.012), 1000, float64) ** 2.
    ref = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    np.testing.assert_allclose(betas, ref.numpy(), rtol=1e-14, atol=0)
    diff = np.abs(ACP - _ddim().alphas_cumprod.double().numpy()).max()
    print(f"alphas_cumprod float64 vs diffusers float32: max abs diff {diff:.3e}")
    assert diff < 1e-6


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_timesteps_match_diffusers(steps):
    d, p = _ddim(), _dpm()
    d.set_timesteps(steps)
    p.set_timesteps(steps)
    ours = S.ddim_timesteps(1000, steps)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, d.timesteps.numpy())
    np.testing.assert_array_equal(S.dpmpp_2m_timesteps(1000, steps), p.timesteps.numpy())
    assert p.config.timestep_spacing == "linspace"  # what users of this model get (see dpmpp_2m_timesteps)


def test_ddim_50_steps_is_the_original_schedule():
    ts = S.ddim_timesteps(1000, 50)
    np.testing.assert_array_equal(ts, (1 + np.arange(0, 1000, 20))[::-1])
    assert ts[0] == 981 and ts[-1] == 1


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_ddim_loop_matches_diffusers(steps):
    x_init, eps_fn = _problem()
    ours = sample(eps_fn, x_init.copy(), S.ddim_timesteps(1000, steps), ACP, sampler="ddim")
    assert ours.shape == SHAPE and ours.dtype == np.float64

    ref = _ddim()
    _inject_float64_schedule(ref)
    exact = np.abs(ours - _run_diffusers(ref, steps, x_init, eps_fn)).max()
    stock = np.abs(ours - _run_diffusers(_ddim(), steps, x_init, eps_fn)).max()
    print(f"ddim {steps:2d} steps: max abs diff {exact:.2e} (same schedule), {stock:.2e} (diffusers' float32 schedule)")
    assert exact < 1e-6
    assert stock < 1e-4  # the whole difference is alphas_cumprod rounded to float32 in diffusers


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_dpmpp_2m_loop_matches_diffusers(steps):
    x_init, eps_fn = _problem(1)
    ours = sample(eps_fn, x_init.copy(), S.dpmpp_2m_timesteps(1000, steps), ACP, sampler="dpm++")
    ref = _dpm()
    _inject_float64_schedule(ref)
    theirs = _run_diffusers(ref, steps, x_init, eps_fn)
    # diffusers runs every DPM step in float32 whatever the sample's dtype. Its rounding floor here is what our own
    # loop loses when run in float32: the 1-step case divides a float32 cancellation by alpha(999) = 0.068.
    ours32 = sample(
        lambda x, t: eps_fn(x.astype(np.float64), t).astype(np.float32),
        x_init.astype(np.float32),
        S.dpmpp_2m_timesteps(1000, steps),
        ACP,
        sampler="dpm++",
    )
    floor = np.abs(ours32 - ours).max()
    err = np.abs(ours - theirs).max()
    stock = np.abs(ours - _run_diffusers(_dpm(), steps, x_init, eps_fn)).max()
    print(
        f"dpm++2m {steps:2d} steps: max abs diff {err:.2e} (same schedule), {stock:.2e} (diffusers' float32 "
        f"schedule); float32 floor {floor:.2e}"
    )
    assert err < max(1e-6, 4 * floor)
    assert stock < 1e-4


def test_ddim_eta_one_matches_diffusers_with_same_noise():
    x_init, eps_fn = _problem(2)
    steps = 20
    ts = S.ddim_timesteps(1000, steps)
    noises = np.random.default_rng(7).standard_normal((steps, *SHAPE))
    x = x_init.copy()
    for i, t in enumerate(ts):
        t_prev = int(ts[i + 1]) if i + 1 < steps else None
        x = S.ddim_step(x, eps_fn(x, int(t)), int(t), t_prev, ACP, eta=1.0, noise=noises[i])
    ref = _ddim()
    _inject_float64_schedule(ref)
    theirs = _run_diffusers(ref, steps, x_init, eps_fn, noises=noises, eta=1.0)
    err = np.abs(x - theirs).max()
    print(f"ddim eta=1, {steps} steps: max abs diff {err:.2e}")
    assert err < 1e-6
    # The noise really entered: eta 0 gives something else.
    assert np.abs(x - sample(eps_fn, x_init.copy(), ts, ACP)).max() > 1e-2


def test_sample_driver_draws_noise_from_rng_and_reports_progress():
    x_init, eps_fn = _problem(3)
    ts = S.ddim_timesteps(1000, 5)
    seen: list[tuple[int, int]] = []
    a = sample(
        eps_fn, x_init, ts, ACP, eta=0.5, rng=np.random.default_rng(3), callback=lambda i, t, x: seen.append((i, t))
    )
    b = sample(eps_fn, x_init, ts, ACP, eta=0.5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)  # same seed, same result
    assert seen == [(i, int(t)) for i, t in enumerate(ts)]


def test_dtype_is_kept():
    x_init, eps_fn = _problem(4)
    x32 = x_init.astype(np.float32)
    out = sample(lambda x, t: eps_fn(x, t).astype(np.float32), x32, S.ddim_timesteps(1000, 10), ACP)
    assert out.dtype == np.float32
    out = sample(
        lambda x, t: eps_fn(x, t).astype(np.float32), x32, S.dpmpp_2m_timesteps(1000, 10), ACP, sampler="dpm++"
    )
    assert out.dtype == np.float32


def test_previous_timestep_comes_from_the_schedule():
    # A step with an arbitrary previous timestep uses alphas_cumprod at exactly that entry (no config arithmetic).
    rng = np.random.default_rng(5)
    x, eps = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    a_t, a_p = ACP[999], ACP[500]
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    np.testing.assert_allclose(
        S.ddim_step(x, eps, 999, 500, ACP), np.sqrt(a_p) * x0 + np.sqrt(1 - a_p) * eps, atol=1e-12
    )
    # After the last step, alpha_prev is alphas_cumprod[0] (set_alpha_to_one False), not 1.
    last = S.ddim_step(x, eps, 1, None, ACP)
    x0 = (x - np.sqrt(1 - ACP[1]) * eps) / np.sqrt(ACP[1])
    np.testing.assert_allclose(last, np.sqrt(ACP[0]) * x0 + np.sqrt(1 - ACP[0]) * eps, atol=1e-12)
    # DPM-Solver++'s first-order step is DDIM (eta 0); its last step returns the data prediction.
    np.testing.assert_allclose(
        S.dpmpp_2m_step(x, eps, 999, 500, None, None, ACP)[0], S.ddim_step(x, eps, 999, 500, ACP), atol=1e-12
    )
    xp, x0p = S.dpmpp_2m_step(x, eps, 40, None, x, 80, ACP)
    np.testing.assert_array_equal(xp, x0p)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, "50", True])
def test_bad_step_counts_are_usage_errors(steps):
    with pytest.raises(UsageError, match="steps"):
        S.ddim_timesteps(1000, steps)
    with pytest.raises(UsageError, match="steps"):
        S.dpmpp_2m_timesteps(1000, steps)


def test_validation_errors():
    x = np.zeros(SHAPE)
    with pytest.raises(UsageError, match="1000"):
        S.dpmpp_2m_timesteps(1000, 1000)  # would repeat timesteps
    with pytest.raises(UsageError, match="eta"):
        S.ddim_step(x, x, 981, 961, ACP, eta=-0.1)
    with pytest.raises(ValueError, match="noise"):
        S.ddim_step(x, x, 981, 961, ACP, eta=1.0)
    with pytest.raises(ValueError, match="noise"):
        S.ddim_step(x, x, 981, 961, ACP, eta=1.0, noise=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="same shape"):
        S.ddim_step(x, np.zeros((1, 4)), 981, 961, ACP)
    with pytest.raises(ValueError, match="before"):
        S.ddim_step(x, x, 500, 600, ACP)
    with pytest.raises(ValueError, match="outside"):
        S.ddim_step(x, x, 1000, None, ACP)
    with pytest.raises(ValueError, match="together"):
        S.dpmpp_2m_step(x, x, 500, 400, x, None, ACP)
    with pytest.raises(UsageError, match=r"ddim, dpm\+\+"):  # one spelling: the registry's names
        samplers.get("euler")
    with pytest.raises(UsageError, match="eta"):
        sample(lambda x, t: x, x, [981, 961], ACP, sampler="dpm++", eta=0.5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        sample(lambda x, t: x, x, [981, 961], ACP, eta=0.5)
