"""Video-to-video math against diffusers (get_timesteps, add_noise, DPM-Solver++ from a begin index, the posterior
sample, frame preprocessing), the held-frame replacement, and continuation bookkeeping."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from support.hub import MS17B_SCHEDULER_CONFIG

from t2vrt.errors import UsageError
from t2vrt.runtime import schedulers as S
from t2vrt.runtime import vid2vid_math as V
from t2vrt.runtime.samplers import sample

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

ACP = S.alphas_cumprod(S.scaled_linear_betas(0.00085, 0.012, 1000))
SHAPE = (1, 4, 3, 5, 6)


def _ddim():
    return diffusers.DDIMScheduler.from_config(MS17B_SCHEDULER_CONFIG)


def _dpm():
    return diffusers.DPMSolverMultistepScheduler.from_config(_ddim().config)


def _their_kept(sched, steps: int, strength: float) -> tuple[np.ndarray, int]:
    """diffusers' VideoToVideoSDPipeline.get_timesteps, called on a stand-in pipeline that has only a scheduler."""
    from diffusers import VideoToVideoSDPipeline

    sched.set_timesteps(steps)
    ts, n = VideoToVideoSDPipeline.get_timesteps(SimpleNamespace(scheduler=sched), steps, strength, "cpu")
    return ts.numpy(), n


@pytest.mark.parametrize("steps", [50, 25, 7, 4, 1])
@pytest.mark.parametrize("strength", [1.0, 0.85, 0.7, 0.6, 0.5, 0.3, 0.26])
def test_kept_timesteps_match_diffusers(steps: int, strength: float) -> None:
    if int(steps * strength) < 1:
        with pytest.raises(UsageError, match="keeps no step"):
            V.strength_start(steps, strength)
        return
    for sched, ours_full in ((_ddim(), S.ddim_timesteps(1000, steps)), (_dpm(), S.dpmpp_2m_timesteps(1000, steps))):
        theirs, n = _their_kept(sched, steps, strength)
        ours = V.kept_timesteps(ours_full, strength)
        np.testing.assert_array_equal(ours, theirs)
        assert len(ours) == n
        if isinstance(sched, diffusers.DPMSolverMultistepScheduler):
            assert sched.begin_index == V.strength_start(steps, strength)
    assert V.strength_start(50, 0.6) == 20 and len(V.kept_timesteps(S.ddim_timesteps(1000, 50), 0.6)) == 30


def test_add_noise_matches_both_schedulers() -> None:
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    for steps, strength in ((50, 0.6), (25, 0.8), (4, 0.5)):
        ddim = _ddim()
        (t0, *_), _ = _their_kept(ddim, steps, strength)
        theirs = ddim.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.tensor([t0])).numpy()
        ours = V.add_noise(x0, noise, int(t0), ACP)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)
        dpm = _dpm()
        (t0, *_), _ = _their_kept(dpm, steps, strength)  # DPM adds noise through sigmas at its begin index
        theirs = dpm.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.tensor([t0])).numpy()
        np.testing.assert_allclose(V.add_noise(x0, noise, int(t0), ACP), theirs, rtol=0, atol=2e-6)
    assert np.array_equal(V.add_noise(x0, noise, 0, np.ones(10)), x0)  # a_t = 1: nothing added


def _eps_fn(seed: int = 1):
    target = 0.8 * np.tanh(np.random.default_rng(seed).standard_normal(SHAPE))

    def eps(x: np.ndarray, t: int) -> np.ndarray:
        a = ACP[t]
        x0_hat = 0.7 * target + 0.3 * np.tanh(x * (1.0 - t / 2000.0))
        return (x - np.sqrt(a) * x0_hat) / np.sqrt(1.0 - a)

    return eps


@pytest.mark.parametrize("name, make", [("ddim", _ddim), ("dpm++", _dpm)])
def test_sampling_from_the_kept_timesteps_matches_diffusers(name: str, make) -> None:
    """The whole img2img loop on a synthetic denoiser: noise to the first kept t, then step from the begin index."""
    rng = np.random.default_rng(2)
    x0, noise = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    eps = _eps_fn()
    steps, strength = 20, 0.55
    full = S.ddim_timesteps(1000, steps) if name == "ddim" else S.dpmpp_2m_timesteps(1000, steps)
    kept = V.kept_timesteps(full, strength)
    ours = sample(eps, V.add_noise(x0, noise, int(kept[0]), ACP), kept, ACP, sampler=name)

    sched = make()
    sched.alphas_cumprod = torch.from_numpy(ACP.copy())  # float64 schedule on both sides: compare the math only
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(ACP[0], dtype=torch.float64)
    if name == "dpm++":
        sched.set_timesteps(steps)
        sched.alpha_t = torch.sqrt(sched.alphas_cumprod)
        sched.sigma_t = torch.sqrt(1 - sched.alphas_cumprod)
        sched.lambda_t = torch.log(sched.alpha_t) - torch.log(sched.sigma_t)
        sigmas = np.sqrt((1 - ACP) / ACP)[sched.timesteps.numpy()]
        sched.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]))
    ts, _ = _their_kept(sched, steps, strength)
    x = sched.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.tensor(ts[:1]))
    for t in ts:
        x = sched.step(torch.from_numpy(eps(x.numpy(), int(t))), int(t), x).prev_sample
    err = np.abs(ours - x.numpy()).max()
    print(f"{name} {steps} steps at strength {strength}: {len(kept)} kept, max abs diff vs diffusers {err:.2e}")
    assert len(kept) == 11 and err < 1e-6


def test_posterior_latents_match_diffusers_sample_and_mode() -> None:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    gen = torch.Generator().manual_seed(0)
    moments = torch.randn(3, 8, 4, 5, generator=gen)
    post = DiagonalGaussianDistribution(moments)
    draw = torch.Generator().manual_seed(7)
    theirs = post.sample(torch.Generator().manual_seed(7)).numpy() * 0.18215
    noise = torch.randn(post.mean.shape, generator=draw).numpy()  # the same draw, taken explicitly
    ours = V.posterior_latents(post.mean.numpy(), post.logvar.numpy(), 0.18215, noise)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        V.posterior_latents(post.mean.numpy(), post.logvar.numpy(), 0.18215), post.mode().numpy() * 0.18215, rtol=1e-6
    )
    with pytest.raises(ValueError, match="posterior noise must have shape"):
        V.posterior_latents(post.mean.numpy(), post.logvar.numpy(), 0.18215, noise[:1])


def test_frames_to_images_matches_diffusers_preprocessing() -> None:
    from diffusers.video_processor import VideoProcessor

    frames = np.random.default_rng(3).integers(0, 256, (4, 16, 24, 3), dtype=np.uint8)
    ours = V.frames_to_images(frames)
    from PIL import Image

    # PIL frames, as diffusers' zeroscope example passes them (a uint8 numpy array would be taken as [0, 1] floats)
    theirs = VideoProcessor(do_resize=False, vae_scale_factor=8).preprocess_video([Image.fromarray(f) for f in frames])
    assert ours.shape == (4, 3, 16, 24) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs[0].permute(1, 0, 2, 3).numpy())
    assert ours.min() == -1.0 or frames.min() > 0
    z = np.arange(2 * 4 * 3 * 5, dtype=np.float32).reshape(3, 4, 2, 5)  # (f, c, h, w)
    assert V.to_video(z).shape == (1, 4, 3, 2, 5) and np.array_equal(V.to_frames(V.to_video(z)), z)


def test_hold_replaces_only_the_first_frames() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 4, 6, 3, 5)).astype(np.float32)
    known = rng.standard_normal((1, 4, 2, 3, 5)).astype(np.float32)
    noise = rng.standard_normal(known.shape).astype(np.float32)
    out = V.hold(x, known, 501, ACP, noise)
    np.testing.assert_array_equal(out[:, :, :2], V.add_noise(known, noise, 501, ACP))
    np.testing.assert_array_equal(out[:, :, 2:], x[:, :, 2:])
    assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(V.hold(x, known, None, ACP)[:, :, :2], known)  # after the last step: as known
    with pytest.raises(ValueError, match="needs noise"):
        V.hold(x, known, 501, ACP)
    with pytest.raises(ValueError, match="do not fit"):
        V.hold(x, known[:, :, :, :2], 501, ACP, noise[:, :, :, :2])
    assert V.check_hold(3, 16) == 3
    for bad in (0, 16, 2.5, True):
        with pytest.raises(UsageError, match=r"held frames must be an integer in 1..15"):
            V.check_hold(bad, 16)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_holding_eps_is_the_repaint_loop(name: str) -> None:
    """Replacing the held frames in the UNet's input equals editing x before every step (RePaint), for the frames
    generated; the held frames end as the known latents."""
    rng = np.random.default_rng(5)
    shape = (1, 4, 5, 3, 4)
    x_init = rng.standard_normal(shape)
    known = rng.standard_normal((1, 4, 2, 3, 4))
    target = 0.8 * np.tanh(rng.standard_normal(shape))

    def eps(x: np.ndarray, t: int) -> np.ndarray:  # frames interact, as in the UNet: each sees the mean over frames
        a = ACP[t]
        x0_hat = 0.6 * target + 0.2 * np.tanh(x) + 0.2 * np.tanh(x.mean(axis=2, keepdims=True))
        return (x - np.sqrt(a) * x0_hat) / np.sqrt(1.0 - a)

    ts = S.ddim_timesteps(1000, 8) if name == "ddim" else S.dpmpp_2m_timesteps(1000, 8)
    noises = [rng.standard_normal(known.shape) for _ in ts]
    ours = sample(V.holding_eps(eps, known, ACP, lambda i: noises[i]), x_init.copy(), ts, ACP, sampler=name)
    ours = V.hold(ours, known, None, ACP)

    # The explicit loop: x edited before each step, stepped one at a time with the sampler's step function.
    x, prev_x0, t_last = x_init.copy(), None, None
    for i, t in enumerate(ts):
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else None
        x = V.hold(x, known, int(t), ACP, noises[i])
        if name == "ddim":
            x = S.ddim_step(x, eps(x, int(t)), int(t), t_prev, ACP)
        else:
            x, prev_x0 = S.dpmpp_2m_step(x, eps(x, int(t)), int(t), t_prev, prev_x0, t_last, ACP)
            t_last = int(t)
    x = V.hold(x, known, None, ACP)
    err = np.abs(ours - x).max()
    assert err < 1e-12, err
    np.testing.assert_array_equal(ours[:, :, :2], known)
    free = sample(eps, x_init.copy(), ts, ACP, sampler=name)
    assert np.abs(free[:, :, 2:] - ours[:, :, 2:]).max() > 1e-3  # holding changed the generated frames


def test_continuation_bookkeeping() -> None:
    assert V.continuation_length(24, 24, 8, 3) == 24 + 3 * 16
    video = np.arange(5)[:, None] * np.ones((5, 2))
    window = 100 + np.arange(4)[:, None] * np.ones((4, 2))
    out = V.stitch(video, window, 2)
    assert out.shape == (7, 2) and np.array_equal(out[:5], video) and np.array_equal(out[5:, 0], [102, 103])
    for args, message in [
        ((24, 24, 0, 1), r"overlap must be an integer in 1..23"),
        ((24, 24, 24, 1), r"overlap must be an integer in 1..23"),
        ((4, 24, 8, 1), "the clip has 4 frames; an overlap of 8"),
        ((24, 24, 8, 0), "windows must be an integer >= 1"),
        ((24, 1, 1, 1), "at least 2 frames"),
    ]:
        with pytest.raises(UsageError, match=message):
            V.continuation_length(*args)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.01, True, "0.5", float("nan")])
def test_strength_outside_the_range_is_one_line(bad) -> None:
    with pytest.raises(UsageError, match=r"strength must be a number in \(0, 1\]"):
        V.check_strength(bad)
