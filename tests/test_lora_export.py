"""`t2vrt export tiny --lora ...` end to end: a T2V-Turbo-style LoRA makes a few-step bundle whose frames match a
reference loop over diffusers' UNet3DConditionModel (time_cond_proj_dim=256) + LCMScheduler from the same latents and
noises; the manifest records the LoRA; bad LoRAs fail before anything is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lora_fixtures import collapse_by_name, diffusers_unet, module_shapes, product_pair
from support.hub import MS17B_SCHEDULER_CONFIG

from t2vrt.cli import cli
from t2vrt.lora.names import diffusers_module_order
from t2vrt.manifest import load_manifest

diffusers = pytest.importorskip("diffusers")
PROMPT = "a red fox running through snow"


@pytest.fixture(scope="module")
def turbo(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> tuple[Path, Path, dict, str]:
    """A tensor-list LoRA in T2V-Turbo's layout for the tiny UNet, and the bundle exported with it."""
    from t2vrt.config import UNET_PRESETS

    cfg = UNET_PRESETS["tiny"]
    _, m = tiny_models
    ref = diffusers_unet(m["unet"].state_dict(), guidance=True)
    shapes = module_shapes(ref)
    g = torch.Generator().manual_seed(21)
    pairs = {name: product_pair(shapes[name], 4, g) for name in diffusers_module_order(cfg, guidance=True)}
    root = tmp_path_factory.mktemp("turbo")
    lora = root / "unet_lora.pt"
    torch.save([t for up_down in pairs.values() for t in up_down], lora)
    out = root / "bundle"
    result = CliRunner().invoke(cli, ["export", "tiny", "--out", str(out), "--precision", "fp32", "--lora", str(lora)])
    assert result.exit_code == 0, result.output
    return out, lora, pairs, result.output


def test_export_reports_and_records_the_lora(turbo) -> None:
    out, lora, pairs, output = turbo
    assert f"LoRA: {len(pairs)} modules changed, total delta norm" in output
    assert "guidance embedding folded into time_embed.0.bias at w 7.5 (base seed 0)" in output
    manifest = load_manifest(out)
    rec = manifest.lora["loras"][0]
    assert rec["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert (rec["format"], rec["scale"], rec["modules"]) == ("cloneofsimo-list", 1.0, len(pairs))
    fold = manifest.lora["guidance_embedding"]
    assert (fold["mode"], fold["w"], fold["base_seed"]) == ("folded", 7.5, 0) and "reproducible" in fold["reason"]
    d = manifest.defaults
    assert (d.sampler, d.num_inference_steps, d.guidance_scale, d.negative_prompt) == ("t2v-turbo", 4, 1.0, "")


def test_another_scale_re_exports_only_the_unet(turbo, tmp_path: Path) -> None:
    out, lora, _, _ = turbo
    copy = tmp_path / "bundle"
    import shutil

    shutil.copytree(out, copy)
    before = json.loads((copy / "manifest.json").read_text())["components"]
    result = CliRunner().invoke(
        cli, ["export", "tiny", "--out", str(copy), "--precision", "fp32", "--lora", f"{lora}:0.5"]
    )
    assert result.exit_code == 0, result.output
    after = json.loads((copy / "manifest.json").read_text())["components"]
    key = {n: (before[n]["files"]["fp32"]["key"], after[n]["files"]["fp32"]["key"]) for n in after}
    assert key["unet"][0] != key["unet"][1]
    assert key["text_encoder"][0] == key["text_encoder"][1] and "text_encoder fp32: unchanged" in result.output


def _reference_frames(tiny_models, pairs: dict, tokens: np.ndarray, seed: int, shape: tuple) -> np.ndarray:
    """diffusers' UNet (cond_proj = the seeded base, the LoRA applied by name) + LCMScheduler at T2V-Turbo's 4
    timesteps with timestep_scaling 10, timestep_cond = wemb(7.5); the pipeline's latents and noises (same seed)."""
    from t2vrt.lora.guidance import base_cond_proj, w_embedding
    from t2vrt.runtime.video import to_uint8

    _, m = tiny_models
    ref = diffusers_unet(m["unet"].state_dict(), guidance=True)
    with torch.no_grad():
        ref.time_embedding.cond_proj.weight.copy_(base_cond_proj(32, seed=0))
    collapse_by_name(ref, pairs)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, np.float32)
    noises = [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for _ in range(3)]
    sched = diffusers.LCMScheduler.from_config(MS17B_SCHEDULER_CONFIG, timestep_scaling=10.0)
    sched.set_timesteps(timesteps=[999, 759, 519, 279])
    wcond = torch.from_numpy(w_embedding(7.5)).float()[None]
    from unittest import mock

    with (
        torch.no_grad(),
        mock.patch.object(
            diffusers.schedulers.scheduling_lcm, "randn_tensor", side_effect=lambda *a, **k: noises.pop(0)
        ),
    ):
        emb = m["text_encoder"](torch.from_numpy(tokens))
        sample, denoised = torch.from_numpy(x), None
        for t in sched.timesteps:
            eps = ref(sample, t.float()[None], emb, timestep_cond=wcond).sample
            sample, denoised = sched.step(eps, t, sample, return_dict=False)
        assert not noises
        images = m["vae_decoder"](denoised[0].permute(1, 0, 2, 3)).numpy()
    return to_uint8(images)


def test_few_step_generation_matches_diffusers_lcm_reference(turbo, tiny_models) -> None:
    from t2vrt.runtime.pipeline import Pipeline

    out, _, pairs, _ = turbo
    with Pipeline.from_bundle(out, backend="onnxruntime-cpu") as pipe:
        video = pipe(PROMPT, num_frames=3, height=64, width=128, seed=5)  # sampler, steps, guidance: the bundle's
        assert (video.options.scheduler, video.options.num_inference_steps) == ("t2v-turbo", 4)
        tokens = pipe.tokenizer.encode([PROMPT])
    ref = _reference_frames(tiny_models, pairs, tokens, 5, (1, 4, 3, 8, 16))
    diff = np.abs(video.frames.astype(int) - ref.astype(int))
    print(
        f"\nfew-step bundle vs diffusers UNet + LCMScheduler: max |diff| {diff.max()} levels, "
        f"{np.mean(diff > 0):.4%} of values differ"
    )
    assert diff.max() <= 1 and ref.std() > 5


def test_generate_needs_no_flags_and_refuses_negative_prompt(turbo, tmp_path: Path) -> None:
    out = turbo[0]
    ok = CliRunner().invoke(cli, ["generate", PROMPT, "--bundle", str(out), "--output", str(tmp_path / "v.mp4"), "-q"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "v.mp4").stat().st_size > 0
    bad = CliRunner().invoke(
        cli, ["generate", PROMPT, "--bundle", str(out), "--negative", "blurry", "--output", str(tmp_path / "w.mp4")]
    )
    assert bad.exit_code == 2 and "takes no negative prompt" in bad.output
    assert not (tmp_path / "w.mp4").exists()


def test_bad_lora_fails_before_anything_is_written(tmp_path: Path) -> None:
    torch.save([torch.randn(8, 2), torch.randn(2, 8)] * 3, tmp_path / "other.pt")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["export", "tiny", "--out", str(out), "--lora", str(tmp_path / "other.pt")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "matches no module set" in lines[0], result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]
