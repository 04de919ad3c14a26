"""Consistency samplers: schedules, boundary terms, and whole loops vs diffusers' LCMScheduler and T2V-Turbo's."""

from __future__ import annotations

import numpy as np
import pytest
from support.hub import MS17B_SCHEDULER_CONFIG

from t2vrt.errors import UsageError
from t2vrt.runtime.consistency import (
    CONSISTENCY_SAMPLERS,
    boundary_scalings,
    consistency_sample,
    consistency_sampler,
    consistency_step,
    lcm_timesteps,
    t2v_turbo_timesteps,
)
from t2vrt.runtime.schedulers import alphas_cumprod, scaled_linear_betas

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

ACP = alphas_cumprod(scaled_linear_betas())
SHAPE = (1, 4, 3, 4, 5)  # (b, c, f, h, w)


class T2VTurboSchedulerTranscription:
    """T2V-Turbo's scheduler/t2v_turbo_scheduler.py (Ji4chenLi/t2v-turbo), the parts its MS pipeline uses, in torch.

    Transcribed from the source: float32 scaled-linear betas from linear_start 0.00085 to linear_end 0.012;
    set_timesteps(n, lcm_origin_steps=50): c = T // 50, origin = arange(1, 51) * c - 1, origin[::-(50 // n)][:n];
    step(): prev timestep = the next entry, or the current one on the last step; x0 from eps; c_skip, c_out with
    t / 0.1; denoised = c_out x0 + c_skip x; if more than one timestep, noise z is drawn (on the last step too) and
    prev = sqrt(a_prev) denoised + sqrt(1 - a_prev) z. The pipeline decodes the last `denoised`.
    """

    def __init__(self, dtype: torch.dtype = torch.float32):
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(dtype)

    def set_timesteps(self, n: int, lcm_origin_steps: int = 50) -> None:
        c = 1000 // lcm_origin_steps
        origin = np.asarray(list(range(1, lcm_origin_steps + 1))) * c - 1
        self.timesteps = torch.from_numpy(origin[:: -(len(origin) // n)][:n].copy())

    def step(self, model_output, timeindex, timestep, sample, noise):
        prev_timeindex = timeindex + 1
        prev_timestep = self.timesteps[prev_timeindex] if prev_timeindex < len(self.timesteps) else timestep
        a_t, a_prev = self.alphas_cumprod[timestep], self.alphas_cumprod[prev_timestep]
        c_skip = 0.5**2 / ((timestep / 0.1) ** 2 + 0.5**2)
        c_out = (timestep / 0.1) / ((timestep / 0.1) ** 2 + 0.5**2) ** 0.5
        pred_x0 = (sample - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
        denoised = c_out * pred_x0 + c_skip * sample
        if len(self.timesteps) > 1:
            prev_sample = a_prev.sqrt() * denoised + (1 - a_prev).sqrt() * noise
        else:
            prev_sample = denoised
        return prev_sample, denoised


def fake_eps(x: np.ndarray, t: int) -> np.ndarray:
    """A deterministic stand-in for the UNet: depends on x and t nonlinearly, so a wrong t or x shows."""
    return np.tanh(0.7 * x + 0.001 * t) + 0.05 * np.sin(x * (1 + t / 500))


def draws(n: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE), [rng.standard_normal(SHAPE) for _ in range(n)]


# ---- schedules ----


def test_schedules_match_the_reference_values() -> None:
    assert lcm_timesteps(1000, 4).tolist() == [999, 759, 499, 259]
    assert t2v_turbo_timesteps(1000, 4).tolist() == [999, 759, 519, 279]
    assert t2v_turbo_timesteps(1000, 8).tolist() == [999, 879, 759, 639, 519, 399, 279, 159]
    assert lcm_timesteps(1000, 1).tolist() == t2v_turbo_timesteps(1000, 1).tolist() == [999]


@pytest.mark.parametrize("steps", range(1, 9))
def test_schedules_match_diffusers_and_t2v_turbo(steps: int) -> None:
    lcm = diffusers.LCMScheduler.from_config(MS17B_SCHEDULER_CONFIG, timestep_scaling=4.0)
    lcm.set_timesteps(steps)
    assert lcm_timesteps(1000, steps).tolist() == lcm.timesteps.tolist()
    ref = T2VTurboSchedulerTranscription()
    ref.set_timesteps(steps)
    assert t2v_turbo_timesteps(1000, steps).tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("bad", [0, 9, -1, 2.5, True])
def test_steps_outside_1_to_8_are_usage_errors(bad: object) -> None:
    for fn in (lcm_timesteps, t2v_turbo_timesteps):
        with pytest.raises(UsageError, match="steps"):
            fn(1000, bad)  # type: ignore[arg-type]


def test_sampler_registry() -> None:
    assert consistency_sampler("lcm").timestep_scaling == 4.0
    assert consistency_sampler("t2v-turbo").timestep_scaling == 10.0
    assert consistency_sampler("t2v-turbo").timesteps(1000, 4).tolist() == [999, 759, 519, 279]
    assert set(CONSISTENCY_SAMPLERS) == {"lcm", "t2v-turbo"}
    with pytest.raises(UsageError, match="unknown consistency sampler 'ddim'"):
        consistency_sampler("ddim")


# ---- boundary terms ----


@pytest.mark.parametrize("scaling", [4.0, 10.0])
def test_boundary_scalings_match_diffusers(scaling: float) -> None:
    lcm = diffusers.LCMScheduler.from_config(MS17B_SCHEDULER_CONFIG, timestep_scaling=scaling)
    for t in (0, 1, 19, 259, 999):
        assert np.allclose(boundary_scalings(t, scaling), lcm.get_scalings_for_boundary_condition_discrete(t))
    assert boundary_scalings(0, scaling) == (1.0, 0.0)  # f(x, 0) = x
    c_skip, c_out = boundary_scalings(999, scaling)
    assert c_skip < 1e-6 and abs(c_out - 1) < 1e-6


def test_last_step_returns_the_estimate_and_earlier_steps_need_noise() -> None:
    x, (z,) = draws(1)
    eps = fake_eps(x, 759)
    x_next, den = consistency_step(x, eps, 759, None, ACP, 4.0)
    assert x_next is den
    with pytest.raises(ValueError, match="needs noise"):
        consistency_step(x, eps, 759, 499, ACP, 4.0)
    with pytest.raises(ValueError, match="before the current"):
        consistency_step(x, eps, 499, 759, ACP, 4.0, z)
    with pytest.raises(ValueError, match="noises or a numpy Generator"):
        consistency_sample(fake_eps, x, [999, 499], ACP, timestep_scaling=4.0)


# ---- whole loops with injected noise ----


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_loop_matches_diffusers_lcm_scheduler(steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    x0, noises = draws(steps - 1, seed=steps)
    lcm = diffusers.LCMScheduler.from_config(MS17B_SCHEDULER_CONFIG, timestep_scaling=4.0)
    lcm.set_timesteps(steps)
    queue = [torch.from_numpy(n) for n in noises]
    monkeypatch.setattr(diffusers.schedulers.scheduling_lcm, "randn_tensor", lambda *a, **k: queue.pop(0))
    sample, denoised = torch.from_numpy(x0), None
    for t in lcm.timesteps:
        eps = torch.from_numpy(fake_eps(sample.numpy(), int(t)))
        sample, denoised = lcm.step(eps, t, sample, return_dict=False)
    assert not queue  # diffusers drew exactly steps - 1 noises

    # diffusers keeps alphas_cumprod, their square roots and c_skip / c_out in float32 (0-d tensors) even for float64
    # latents, so the bar is float32 rounding of O(1) values; a wrong timestep, term or noise is off by >= 1e-2.
    acp_ref = lcm.alphas_cumprod.double().numpy()
    got = consistency_sample(fake_eps, x0, lcm_timesteps(1000, steps), acp_ref, timestep_scaling=4.0, noises=noises)
    ours = consistency_sample(fake_eps, x0, lcm_timesteps(1000, steps), ACP, timestep_scaling=4.0, noises=noises)
    err, err_ours = np.abs(got - denoised.numpy()).max(), np.abs(ours - denoised.numpy()).max()
    print(f"\nLCM {steps} steps vs diffusers LCMScheduler: max abs {err:.2e} (their schedule), {err_ours:.2e} (ours)")
    assert err < 1e-5 and err_ours < 5e-5  # ours: float64 alphas_cumprod, 1/sqrt(a_999) amplifies their rounding
    if steps > 1:  # the bar can tell the noises apart (timestep_scaling barely matters at t >= 139: c_skip < 1e-5)
        other = noises[::-1] if steps > 2 else [-noises[0]]
        swapped = consistency_sample(fake_eps, x0, lcm_timesteps(1000, steps), ACP, timestep_scaling=4.0, noises=other)
        assert np.abs(swapped - denoised.numpy()).max() > 1e-3


@pytest.mark.parametrize("steps", [1, 3, 4, 8])
def test_loop_matches_t2v_turbo_transcription(steps: int) -> None:
    x0, noises = draws(steps, seed=10 + steps)  # T2V-Turbo draws a noise on the last step too, then discards it
    ref = T2VTurboSchedulerTranscription(torch.float64)
    ref.set_timesteps(steps)
    sample, denoised = torch.from_numpy(x0), None
    for i, t in enumerate(ref.timesteps):
        eps = torch.from_numpy(fake_eps(sample.numpy(), int(t)))
        sample, denoised = ref.step(eps, i, int(t), sample, torch.from_numpy(noises[i]))

    turbo = consistency_sampler("t2v-turbo")
    got = consistency_sample(
        fake_eps,
        x0,
        turbo.timesteps(1000, steps),
        ref.alphas_cumprod.numpy(),
        timestep_scaling=turbo.timestep_scaling,
        noises=noises[: steps - 1],
    )
    err = np.abs(got - denoised.numpy()).max()
    print(f"\nT2V-Turbo {steps} steps vs the transcription: max abs {err:.2e}")
    assert err < 1e-10
    lcm_spacing = consistency_sample(
        fake_eps,
        x0,
        lcm_timesteps(1000, steps),
        ref.alphas_cumprod.numpy(),
        timestep_scaling=10.0,
        noises=noises[: steps - 1],
    )
    assert steps < 3 or np.abs(lcm_spacing - denoised.numpy()).max() > 1e-3  # the two spacings differ from 3 steps


def test_loop_with_rng_is_reproducible_and_noise_matters() -> None:
    x0, _ = draws(0)
    ts = lcm_timesteps(1000, 4)

    def run(seed: int) -> np.ndarray:
        return consistency_sample(fake_eps, x0, ts, ACP, timestep_scaling=4.0, rng=np.random.default_rng(seed))

    a, b, c = run(1), run(1), run(2)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    f32 = consistency_sample(
        fake_eps, x0.astype(np.float32), ts, ACP, timestep_scaling=4.0, rng=np.random.default_rng(1)
    )
    assert f32.dtype == np.float32


def test_callback_sees_each_denoised_estimate() -> None:
    x0, noises = draws(3)
    seen: list[tuple[int, int]] = []
    out = consistency_sample(
        fake_eps,
        x0,
        [999, 759, 499, 259],
        ACP,
        timestep_scaling=4.0,
        noises=noises,
        callback=lambda i, t, d: seen.append((i, t)),
    )
    assert seen == [(0, 999), (1, 759), (2, 499), (3, 259)]
    assert out.shape == SHAPE


# ---- the runtime's sampler registry ----


def test_registered_in_the_runtime_sampler_registry() -> None:
    from t2vrt.runtime import samplers

    x0, _ = draws(0)
    for name in ("lcm", "t2v-turbo"):
        s = samplers.get(name)
        assert not s.guided and s.steps_range(1000) == (1, 8)
        ts = s.timesteps(1000, 4)
        got = samplers.sample(fake_eps, x0, ts, ACP, sampler=name, rng=np.random.default_rng(3))
        want = consistency_sample(
            fake_eps,
            x0,
            ts,
            ACP,
            timestep_scaling=consistency_sampler(name).timestep_scaling,
            rng=np.random.default_rng(3),
        )
        assert np.array_equal(got, want)
        with pytest.raises(UsageError, match="deterministic"):
            samplers.sample(fake_eps, x0, ts, ACP, sampler=name, eta=0.5, rng=np.random.default_rng(3))


def test_generate_options_refuse_guidance_and_negative_prompt_for_few_step_samplers() -> None:
    from types import SimpleNamespace

    from t2vrt.runtime.options import GenerateOptions, validate

    manifest = SimpleNamespace(
        model=SimpleNamespace(size_multiple=64), schedule=SimpleNamespace(num_train_timesteps=1000)
    )
    ok = GenerateOptions("a fox", "", 16, 256, 256, 4, 1.0, scheduler="t2v-turbo")
    validate(ok, manifest)  # type: ignore[arg-type]
    for bad, match in (
        (dict(guidance_scale=7.5), "takes no guidance 7.5"),
        (dict(negative_prompt="blurry"), "takes no negative prompt"),
        (dict(num_inference_steps=9), "steps must be an integer in 1..8"),
    ):
        from dataclasses import replace

        with pytest.raises(UsageError, match=match):
            validate(replace(ok, **bad), manifest)  # type: ignore[arg-type]
