"""Video-to-video, image-to-video and held latents through the runtime on the tiny bundle: frames against diffusers'
VideoToVideoSDPipeline built from the same weights with the same random draws, and the one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from t2vrt.errors import UsageError
from t2vrt.runtime.metadata import read_metadata
from t2vrt.runtime.pipeline import Pipeline
from t2vrt.runtime.video import to_uint8

PROMPT = "a tiny green monster and a big flying UFO"
F, H, W, STEPS = 3, 64, 128, 5

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def pipe(tiny_bundle: Path):
    with Pipeline.from_bundle(tiny_bundle, backend="onnxruntime-cpu") as p:
        yield p


def _clip(seed: int = 0, n: int = F) -> np.ndarray:
    """Smooth moving gradients: a clip whose frames differ and survive resizing."""
    yy, xx = np.mgrid[0:H, 0:W]
    frames = [
        np.stack([(xx * 2 + 9 * i) % 256, (yy * 3 + 5 * i + seed) % 256, np.full_like(xx, 40 + 30 * i)], -1)
        for i in range(n)
    ]
    return np.stack(frames).astype(np.uint8)


def _diffusers_v2v(tiny_models, tokens, frames, strength, sampler, seed, guidance=9.0):
    """diffusers' VideoToVideoSDPipeline over our tiny weights mapped to its layout; text embeddings given."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        UNet3DConditionModel,
        VideoToVideoSDPipeline,
    )
    from PIL import Image

    from t2vrt.models import unet3d_keys, vae_encoder_keys, vae_keys

    cfg, m = tiny_models
    unet = UNet3DConditionModel.from_config(unet3d_keys.config_to_diffusers(cfg.unet)).eval()
    unet.load_state_dict(unet3d_keys.original_to_diffusers(m["unet"].state_dict(), cfg.unet))
    vae = AutoencoderKL.from_config(vae_keys.config_to_diffusers(cfg.vae)).eval()
    vae.load_state_dict(
        {
            **vae_keys.original_to_diffusers(m["vae_decoder"].state_dict(), cfg.vae),
            **vae_encoder_keys.original_to_diffusers(m["vae_encoder"].state_dict(), cfg.vae),
        }
    )
    ddim = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    sched = ddim if sampler == "ddim" else DPMSolverMultistepScheduler.from_config(ddim.config)
    p = VideoToVideoSDPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched)
    p.set_progress_bar_config(disable=True)
    with torch.no_grad():
        emb = m["text_encoder"](torch.from_numpy(tokens))  # (2, L, C): cond, uncond
    out = p(
        prompt_embeds=emb[:1],
        negative_prompt_embeds=emb[1:],
        video=[Image.fromarray(f) for f in frames],
        strength=strength,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).frames  # (1, f, 3, H, W) in [0, 1]
    return to_uint8(out[0].numpy() * 2 - 1)


def _diffusers_draws(seed: int, f: int, c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The two draws diffusers makes from its generator, in order: the posterior sample's, then add_noise's."""
    import torch

    g = torch.Generator().manual_seed(seed)
    posterior = torch.randn((f, c, h, w), generator=g).numpy()
    noise = torch.randn((f, c, h, w), generator=g).numpy()
    return posterior, noise.transpose(1, 0, 2, 3)[None].copy()  # (1, c, f, h, w)


@pytest.mark.parametrize("sampler, strength", [("ddim", 0.6), ("dpm++", 0.8)])
def test_frames_match_diffusers_video_to_video(pipe: Pipeline, tiny_models, sampler: str, strength: float) -> None:
    frames = _clip()
    posterior, noise = _diffusers_draws(11, F, 4, H // 8, W // 8)
    video = pipe(
        PROMPT,
        init_video=frames,
        strength=strength,
        latents=noise,
        posterior_noise=posterior,
        num_frames=F,
        height=H,
        width=W,
        num_inference_steps=STEPS,
        guidance_scale=9.0,
        scheduler=sampler,
    )
    ref = _diffusers_v2v(tiny_models, pipe.tokenizer.encode([PROMPT, ""]), frames, strength, sampler, 11)
    diff = np.abs(video.frames.astype(int) - ref.astype(int))
    kept = int(STEPS * strength)
    print(
        f"\nv2v {sampler} strength {strength} ({kept} of {STEPS} steps) vs diffusers VideoToVideoSDPipeline: "
        f"max |diff| {diff.max()} levels, {np.mean(diff > 0):.3%} of values differ"
    )
    assert video.frames.shape == ref.shape == (F, H, W, 3)
    assert diff.max() <= 1
    assert ref.std() > 5
    assert video.record["init"] == {"kind": "video", "strength": strength, "start_frame": 0, "source": "array"}
    assert video.timings["step"] > 0 and "init_encode" in video.timings


SMALL = dict(num_frames=4, height=64, width=64, num_inference_steps=4)


def test_image_to_video_holds_the_first_frames(pipe: Pipeline) -> None:
    image = _clip()[0][:, :64]
    v = pipe(PROMPT, init_image=image, hold_frames=2, seed=3, **SMALL)
    assert v.frames.shape == (4, 64, 64, 3)
    assert np.array_equal(v.frames[0], v.frames[1])  # both held at the image's latents after the last step
    assert not np.array_equal(v.frames[0], v.frames[3])  # the rest is generated
    assert v.record["init"] == {"kind": "image", "strength": 1.0, "hold_frames": 2, "source": "array"}
    free = pipe(PROMPT, seed=3, **SMALL)
    assert not np.array_equal(free.frames[2:], v.frames[2:])  # holding changed what the model generated
    # the hold noise can be given: same draws, same video; other draws, another video
    noise = [np.random.default_rng(i).standard_normal((1, 4, 2, 8, 8)).astype(np.float32) for i in range(4)]
    a = pipe(PROMPT, init_image=image, hold_frames=2, seed=3, hold_noise=noise, **SMALL).frames
    assert np.array_equal(a, pipe(PROMPT, init_image=image, hold_frames=2, seed=3, hold_noise=noise, **SMALL).frames)


def test_posterior_mean_and_seed_draws(pipe: Pipeline) -> None:
    clip = _clip()[:, :, :64]
    drawn = pipe(PROMPT, init_video=np.concatenate([clip, clip[:1]]), seed=5, **SMALL).frames
    again = pipe(PROMPT, init_video=np.concatenate([clip, clip[:1]]), seed=5, **SMALL).frames
    mean = pipe(PROMPT, init_video=np.concatenate([clip, clip[:1]]), seed=5, posterior_noise="mean", **SMALL).frames
    assert np.array_equal(drawn, again) and not np.array_equal(drawn, mean)


def test_held_latents_continue_a_window(pipe: Pipeline) -> None:
    from t2vrt.runtime.extend import extend

    clip = _clip(n=5)[:, :, :64]
    out = extend(pipe, clip, PROMPT, overlap=2, windows=2, num_frames=4, seed=1, num_inference_steps=3)
    assert out.frames.shape == (5 + 2 * 2, 64, 64, 3)
    assert np.array_equal(out.frames[:5], clip)  # the clip's own frames, untouched
    assert out.record["init"] == {"kind": "continuation", "overlap": 2, "windows": 2, "window": 4, "source_frames": 5}
    assert out.record["frames"] == 9
    with pytest.raises(UsageError, match="overlap must be an integer in 1..3"):
        extend(pipe, clip, PROMPT, overlap=4, windows=1, num_frames=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(init_video=_clip(n=2)[:, :, :64]), "has 2 frames from frame 0; 4 are needed"),
        (dict(init_video=_clip()[:, :, :64], strength=0.0), r"strength must be a number in \(0, 1\]"),
        (dict(init_video=_clip()[:, :, :64], strength=1.5), r"strength must be a number in \(0, 1\]"),
        (dict(init_video=_clip()[:, :, :64], strength=0.1), "keeps no step"),
        (dict(init_video=_clip(), height=60), "height must be a positive multiple of 64"),
        (dict(strength=0.5), "only with an init video or an init image"),
        (dict(hold_frames=2), "only with an init video or an init image"),
        (dict(init_video=_clip(), init_image=_clip()[0]), "not video and image"),
        (dict(init_image=_clip()[0], hold_frames=4), r"held frames must be an integer in 1..3"),
        (dict(init_video=_clip(), hold_frames=1), "hold frames go with an init image"),
        (dict(init_image=_clip()[0], start_frame=1), "start frame goes with an init video"),
        (dict(init_video=_clip(n=4), posterior_noise=np.zeros((1, 4, 8, 8))), r"posterior noise must have shape"),
        (dict(init_video="/nonexistent/clip.mp4"), "no such clip"),
    ],
)
def test_bad_inputs_are_one_line(pipe: Pipeline, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        pipe(PROMPT, **{**SMALL, **kwargs})


def test_bundle_without_encoder_says_how_to_add_it(tiny_bundle: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    raw = json.loads((old / "manifest.json").read_text())
    del raw["components"]["vae_encoder"]  # what a bundle exported before video-to-video looks like
    (old / "manifest.json").write_text(json.dumps(raw))
    shutil.rmtree(old / "vae_encoder")
    with Pipeline.from_bundle(old, backend="onnxruntime-cpu") as p:
        assert p(PROMPT, **SMALL).frames.shape == (4, 64, 64, 3)  # text-to-video still works
        with pytest.raises(UsageError, match=r"has no VAE encoder .*`t2vrt export .* --out .*old`"):
            p(PROMPT, init_video=_clip(n=4)[:, :, :64], **SMALL)


def test_every_video_records_its_prompt(pipe: Pipeline, tmp_path: Path) -> None:
    v = pipe(PROMPT, negative_prompt="blurry", seed=9, **SMALL)
    path = v.save(tmp_path / "v.mp4")
    rec = read_metadata(path)
    assert rec is not None and rec["prompt"] == PROMPT and rec["negative_prompt"] == "blurry"
    assert rec["seed"] == 9 and rec["frames"] == 4 and rec["model"] == pipe.manifest.model_name and "init" not in rec


def test_consistency_sampler_runs_from_the_kept_steps(pipe: Pipeline) -> None:
    """A few-step consistency sampler starts mid-schedule too: 4 lcm steps at strength 0.5 run the last 2."""
    steps: list[tuple[int, int]] = []
    v = pipe(
        PROMPT,
        init_video=_clip(n=4)[:, :, :64],
        strength=0.5,
        scheduler="lcm",
        guidance_scale=1.0,
        callback=lambda i, n: steps.append((i, n)),
        **{**SMALL, "num_inference_steps": 4},
    )
    assert v.frames.shape == (4, 64, 64, 3) and steps == [(1, 2), (2, 2)]
