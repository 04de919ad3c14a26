"""`t2vrt info MODEL`: layout, parameter counts and files, in-process (CliRunner) and as a subprocess."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support.writers import write_diffusers, write_original

from t2vrt.cli import cli
from t2vrt.config import preset
from t2vrt.models import checkpoint
from t2vrt.models.info import describe, parameter_counts

T2VRT = Path(sys.executable).parent / "t2vrt"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("info")
    models, cfg = checkpoint.tiny_model(), preset("tiny")
    return {
        "original": write_original(root / "original", models, cfg),
        "diffusers": write_diffusers(root / "diffusers", models, cfg),
    }


def _tiny_counts() -> dict[str, int]:
    models = checkpoint.tiny_model()
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    return counts | {"total": sum(counts.values())}


@pytest.mark.parametrize("layout", ["embedded", "original", "diffusers"])
def test_info_each_layout(written, layout):
    model = "tiny" if layout == "embedded" else str(written[layout])
    result = CliRunner().invoke(cli, ["info", model])
    assert result.exit_code == 0, result.output
    out = result.output
    print(out)
    want = _tiny_counts()
    assert f"layout:  {layout}" in out and "name:    tiny" in out
    for name in ("text_encoder", "unet", "vae_decoder", "total"):
        assert f"{want[name]:,}" in out, name
    if layout == "original":
        assert "VQGAN_autoencoder.pth" in out and "open_clip_pytorch_model.bin" in out
    if layout == "diffusers":
        assert "unet/diffusion_pytorch_model.safetensors" in out

    as_json = CliRunner().invoke(cli, ["info", model, "--json"])
    assert as_json.exit_code == 0
    d = json.loads(as_json.output)
    assert d["layout"] == layout and d["parameters"] == want
    assert d["config"] == json.loads(json.dumps(preset("tiny").to_dict()))
    assert d["bytes"] == sum(Path(f["path"]).stat().st_size for f in d["files"])


def test_info_subprocess(written):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [str(T2VRT), "info", str(written["diffusers"])], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "layout:  diffusers" in r.stdout and f"{_tiny_counts()['unet']:,}" in r.stdout

    r = subprocess.run(
        [str(T2VRT), "info", str(written["diffusers"] / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    print("stderr:", r.stderr)
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: MODEL ") and "missing" in r.stderr and "Traceback" not in r.stderr


def test_info_bad_paths_in_process(written, tmp_path):
    r = CliRunner().invoke(cli, ["info", str(tmp_path)])
    assert r.exit_code == 2 and "holds no checkpoint" in r.output and "Traceback" not in r.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "configuration.json").write_text("{}")
    r = CliRunner().invoke(cli, ["info", str(broken)])
    assert r.exit_code == 2 and "text2video_pytorch_model.pth (unet) is missing" in r.output


def test_counts_full_size_on_meta_match_diffusers(tmp_path):
    """ms-1.7b's counts come from shapes: no weights are read (the files here are empty) and no RAM is taken."""
    from diffusers import AutoencoderKL, UNet3DConditionModel

    from t2vrt.models import text_encoder_keys, unet3d_keys, vae_keys

    cfg = preset("ms-1.7b")
    root = tmp_path / "text-to-video-ms-1.7b"
    for part, config, weights in [
        ("unet", unet3d_keys.config_to_diffusers(cfg.unet), "diffusion_pytorch_model.safetensors"),
        ("vae", vae_keys.config_to_diffusers(cfg.vae), "diffusion_pytorch_model.safetensors"),
        ("text_encoder", text_encoder_keys.config_to_diffusers(cfg.text_encoder), "model.safetensors"),
    ]:
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(json.dumps(config))
        (root / part / weights).write_bytes(b"")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d = describe(str(root))
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    p = d["parameters"]
    print(f"ms-1.7b: {p}; peak RSS grew {grew_mb:.0f} MB")
    assert d["name"] == "ms-1.7b" and p == parameter_counts(cfg)
    assert grew_mb < 500  # 1.7B fp32 parameters would be 6.8 GB
    with torch.device("meta"):
        unet = UNet3DConditionModel(**unet3d_keys.config_to_diffusers(cfg.unet))
        vae = AutoencoderKL(**{k: v for k, v in vae_keys.config_to_diffusers(cfg.vae).items() if not k.startswith("_")})
    assert p["unet"] == sum(t.numel() for t in unet.parameters())
    decoder_side = sum(t.numel() for n, t in vae.named_parameters() if n.startswith(("decoder.", "post_quant_conv.")))
    assert p["vae_decoder"] == decoder_side
    assert 1.3e9 < p["unet"] < 1.5e9


def test_info_describes_a_bundle_and_its_engines(tiny_bundle, tmp_path) -> None:
    import shutil

    from click.testing import CliRunner

    from t2vrt.cli import cli

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    r = CliRunner().invoke(cli, ["info", str(b)])
    assert r.exit_code == 0, r.output
    assert "name:    tiny" in r.output and "fp16 gate" in r.output and "TensorRT engines: none" in r.output
    half = b / "engines" / "SomeGPU-sm89-trt10.13" / "unet-0123.plan.tmp"  # an interrupted build
    half.parent.mkdir(parents=True)
    half.write_bytes(b"partial")
    r = CliRunner().invoke(cli, ["info", str(b)])
    assert "TensorRT engines: 1" in r.output and "STALE" in r.output and "--clean" in r.output
