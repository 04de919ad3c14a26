"""UNet3D: original key names, the diffusers key map both ways, parity vs diffusers, configs, ONNX export."""

from __future__ import annotations

import dataclasses
import resource
import time
import warnings

import numpy as np
import pytest
import torch

from t2vrt.config.unet import UNET_PRESETS, UNet3DConfig
from t2vrt.errors import T2VError
from t2vrt.iospec import unet_spec
from t2vrt.models.random_init import randomize_
from t2vrt.models.unet3d import UNet3D
from t2vrt.models.unet3d_keys import (
    config_from_diffusers,
    config_from_original,
    config_to_diffusers,
    diffusers_to_original,
    key_pairs,
    original_to_diffusers,
)

diffusers = pytest.importorskip("diffusers")

TINY = UNET_PRESETS["tiny"]
CONTEXT_LEN = 77

# configuration.json of damo-vilab/modelscope-damo-text-to-video-synthesis, "model" -> "model_cfg", verbatim values.
ORIGINAL_MODEL_CFG = {
    "unet_in_dim": 4,
    "unet_dim": 320,
    "unet_y_dim": 768,
    "unet_context_dim": 1024,
    "unet_out_dim": 4,
    "unet_dim_mult": [1, 2, 4, 4],
    "unet_num_heads": 8,
    "unet_head_dim": 64,
    "unet_res_blocks": 2,
    "unet_attn_scales": [1, 0.5, 0.25],
    "unet_dropout": 0.1,
    "temporal_attention": "True",
    "num_timesteps": 1000,
    "mean_type": "eps",
    "var_type": "fixed_small",
    "loss_type": "mse",
}

# unet/config.json of damo-vilab/text-to-video-ms-1.7b.
DIFFUSERS_MS17B_CFG = {
    "_class_name": "UNet3DConditionModel",
    "_diffusers_version": "0.15.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 32,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}


def rel_l2(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def inputs(cfg: UNet3DConfig, b: int, f: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, cfg.in_channels, f, h, w, generator=g)
    timestep = torch.tensor([981.0, 37.0, 500.0][:b])
    text = torch.randn(b, CONTEXT_LEN, cfg.context_dim, generator=g)
    return latents, timestep, text


def diffusers_unet(cfg: UNet3DConfig, sd: dict) -> torch.nn.Module:
    """A diffusers UNet3DConditionModel with our weights (through the key map), sharing their storage."""
    with torch.device("meta"):
        ref = diffusers.UNet3DConditionModel(**config_to_diffusers(cfg))
    ref.load_state_dict(original_to_diffusers(sd, cfg), strict=True, assign=True)
    return ref.eval()


@pytest.fixture(scope="module")
def tiny_models() -> tuple[UNet3D, torch.nn.Module]:
    ours = UNet3D(TINY)
    randomize_(ours, seed=0)
    return ours.eval(), diffusers_unet(TINY, ours.state_dict())


# ---- (a) the key map ----


def test_key_map_covers_both_layouts_exactly(tiny_models: tuple[UNet3D, torch.nn.Module]) -> None:
    ours, _ = tiny_models
    ref = diffusers.UNet3DConditionModel(**config_to_diffusers(TINY))  # freshly built, own parameters
    pairs = key_pairs(TINY)
    orig_keys, diff_keys = [p[0] for p in pairs], [p[1] for p in pairs]
    assert len(set(orig_keys)) == len(set(diff_keys)) == len(pairs)  # a bijection
    assert set(orig_keys) == set(ours.state_dict())
    assert set(diff_keys) == set(ref.state_dict())
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    for orig, diff, reshape in pairs:
        shape = ours_sd[orig].shape[:-1] if reshape else ours_sd[orig].shape
        assert shape == ref_sd[diff].shape, (orig, diff)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_key_map_round_trips_both_ways(tiny_models: tuple[UNet3D, torch.nn.Module]) -> None:
    ours, _ = tiny_models
    sd = ours.state_dict()
    back = diffusers_to_original(original_to_diffusers(sd, TINY), TINY)
    assert list(back) == list(sd)
    assert all(torch.equal(back[k], sd[k]) and back[k].shape == sd[k].shape for k in sd)

    ref_sd = randomize_(diffusers.UNet3DConditionModel(**config_to_diffusers(TINY)), seed=1).state_dict()
    again = original_to_diffusers(diffusers_to_original(ref_sd, TINY), TINY)
    assert set(again) == set(ref_sd)
    assert all(torch.equal(again[k], ref_sd[k]) for k in ref_sd)
    # the diffusers weights load into our model unchanged
    UNet3D(TINY).load_state_dict(diffusers_to_original(ref_sd, TINY), strict=True)


def test_meta_build_and_assign_load(tiny_models: tuple[UNet3D, torch.nn.Module]) -> None:
    """The loader's path: build on the meta device, assign the checkpoint's tensors; no buffers are left on meta."""
    ours, _ = tiny_models
    with torch.device("meta"):
        fresh = UNet3D(TINY)
    fresh.load_state_dict(ours.state_dict(), strict=True, assign=True)
    assert not any(t.is_meta for t in [*fresh.parameters(), *fresh.buffers()])
    x, t, c = inputs(TINY, 1, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x, t, c), ours(x, t, c))


def test_key_map_names_unknown_and_missing_keys(tiny_models: tuple[UNet3D, torch.nn.Module]) -> None:
    sd = dict(tiny_models[0].state_dict())
    with pytest.raises(KeyError, match="input_blocks.1.0.bogus.weight"):
        original_to_diffusers({**sd, "input_blocks.1.0.bogus.weight": torch.zeros(1)}, TINY)
    del sd["input_blocks.1.0.temopral_conv.conv4.3.bias"]
    with pytest.raises(KeyError, match="input_blocks.1.0.temopral_conv.conv4.3.bias"):
        original_to_diffusers(sd, TINY)
    with pytest.raises(KeyError, match="time_embedding.linear_1.weight"):
        diffusers_to_original({}, TINY)
    with pytest.raises(KeyError, match="down_blocks.0.motion_modules.0.weight"):
        diffusers_to_original({"down_blocks.0.motion_modules.0.weight": torch.zeros(1)}, TINY)


def test_original_key_names() -> None:
    with torch.device("meta"):
        keys = set(UNet3D(UNET_PRESETS["ms-1.7b"]).state_dict())
    for k in (
        "time_embed.0.weight",
        "input_blocks.0.0.weight",
        "input_blocks.0.1.proj_in.weight",  # the 8-head input temporal transformer
        "input_blocks.1.0.temopral_conv.conv2.3.weight",  # (sic), Dropout at index 2
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.1.2.transformer_blocks.0.ff.net.0.proj.weight",
        "input_blocks.3.op.weight",
        "input_blocks.4.0.skip_connection.weight",
        "input_blocks.11.0.out_layers.3.weight",
        "middle_block.3.emb_layers.1.weight",
        "output_blocks.2.1.conv.weight",
        "output_blocks.5.3.conv.weight",
        "output_blocks.8.3.conv.weight",
        "output_blocks.11.2.proj_out.weight",
        "out.2.weight",
    ):
        assert k in keys, k
    assert "input_blocks.12.0.in_layers.0.weight" not in keys and "output_blocks.12.0.in_layers.0.weight" not in keys


# ---- (b) parity vs diffusers ----


@pytest.mark.parametrize("b,f,h,w", [(2, 3, 8, 16), (1, 5, 16, 8), (2, 1, 8, 8)])
def test_parity_vs_diffusers(tiny_models: tuple[UNet3D, torch.nn.Module], b: int, f: int, h: int, w: int) -> None:
    ours, ref = tiny_models
    x, t, c = inputs(TINY, b, f, h, w)
    with torch.no_grad():
        got = ours(x, t, c)
        want = ref(x, t, c).sample
    err = rel_l2(got, want)
    print(f"\nUNet3D tiny vs diffusers, batch {b} frames {f} latent {h}x{w}: rel L2 {err:.2e}")
    assert got.shape == (b, TINY.out_channels, f, h, w)
    assert err <= 1e-5


def test_output_depends_on_text_and_other_frames(tiny_models: tuple[UNet3D, torch.nn.Module]) -> None:
    """Guards the parity test against vacuity: cross-attention and the temporal layers both move the output."""
    ours, _ = tiny_models
    x, t, c = inputs(TINY, 2, 3, 8, 16)
    with torch.no_grad():
        base = ours(x, t, c)
        other_text = ours(x, t, c + 1.0)
        x2 = x.clone()
        x2[:, :, 2] += 1.0  # change the last frame only
        other_frame = ours(x2, t, c)
        swapped = ours(x.flip(0), t.flip(0), c.flip(0)).flip(0)  # batch items stay independent
    assert rel_l2(other_text, base) > 1e-3
    assert rel_l2(other_frame[:, :, 0], base[:, :, 0]) > 1e-3
    assert rel_l2(swapped, base) < 1e-5


def test_honours_config_fields() -> None:
    cfg = UNet3DConfig(
        model_channels=16,
        channel_mult=(1, 3),
        num_res_blocks=1,
        attn_scales=(0.5,),
        head_dim=8,
        num_heads=2,
        context_dim=12,
        norm_groups=4,
        temporal_attention=False,
        in_channels=3,
        out_channels=5,
    )
    model = randomize_(UNet3D(cfg), seed=0).eval()
    keys = set(model.state_dict())
    assert not any(".2.transformer_blocks" in k for k in keys) and "input_blocks.0.1.norm.weight" not in keys
    assert "input_blocks.1.1.norm.weight" not in keys  # level 0 (scale 1) has no attention here
    assert model.get_submodule("input_blocks.3.1.transformer_blocks.0.attn1").heads == 48 // 8
    x, t, c = inputs(cfg, 1, 2, 4, 6)
    with torch.no_grad():
        assert model(x, t, c[:, :5]).shape == (1, 5, 2, 4, 6)
    with pytest.raises(T2VError, match="temporal_attention"):
        config_to_diffusers(cfg)


# ---- (c) configs ----


def test_config_from_original_real_values() -> None:
    cfg = config_from_original(ORIGINAL_MODEL_CFG)
    assert cfg == UNET_PRESETS["ms-1.7b"]
    assert config_from_original({**ORIGINAL_MODEL_CFG, "temporal_attention": "False"}).temporal_attention is False


def test_config_from_diffusers_real_values() -> None:
    assert config_from_diffusers(DIFFUSERS_MS17B_CFG) == UNET_PRESETS["ms-1.7b"]


@pytest.mark.parametrize("name", ["ms-1.7b", "tiny"])
def test_config_to_diffusers_round_trip(name: str) -> None:
    cfg = UNET_PRESETS[name]
    d = config_to_diffusers(cfg)
    assert config_from_diffusers(d) == cfg
    if name == "ms-1.7b":
        assert {k: v for k, v in DIFFUSERS_MS17B_CFG.items() if k in d} == d


def test_config_errors_name_the_value() -> None:
    with pytest.raises(T2VError, match="num_heads = 4"):
        config_to_diffusers(dataclasses.replace(TINY, num_heads=4))
    with pytest.raises(T2VError, match="act_fn"):
        config_from_diffusers({**DIFFUSERS_MS17B_CFG, "act_fn": "gelu"})


# ---- (e) ONNX export ----


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
def test_onnx_export_is_dynamic(tiny_models: tuple[UNet3D, torch.nn.Module], tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    ours, _ = tiny_models
    spec = unet_spec(TINY.in_channels, TINY.out_channels, CONTEXT_LEN, TINY.context_dim)
    path = tmp_path / "unet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ours,
            inputs(TINY, 2, 3, 8, 16),
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, f, h, w in [(2, 3, 8, 16), (1, 5, 16, 24)]:
        x, t, c = inputs(TINY, b, f, h, w, seed=3)
        (got,) = session.run(None, {"latents": x.numpy(), "timestep": t.numpy(), "text_embeddings": c.numpy()})
        with torch.no_grad():
            want = ours(x, t, c).numpy()
        err = rel_l2(got, want)
        print(f"\nUNet3D tiny ONNX (onnxruntime CPU) vs torch, batch {b} frames {f} latent {h}x{w}: rel L2 {err:.2e}")
        assert got.shape == want.shape and err <= 1e-5


# ---- (d) the full-size model ----


@pytest.mark.slow
def test_full_ms17b_parity_vs_diffusers() -> None:
    cfg = UNET_PRESETS["ms-1.7b"]
    start = time.perf_counter()
    with torch.device("meta"):
        source = UNet3D(cfg)
    source.to_empty(device="cpu")
    sd = randomize_(source, seed=0).state_dict()
    with torch.device("meta"):
        ours = UNet3D(cfg)
    ours.load_state_dict(sd, strict=True, assign=True)  # the loader's path: meta build, tensors assigned
    del source
    ours.eval()
    ref = diffusers_unet(cfg, sd)  # shares every tensor with ours (the Conv1d -> Linear reshape is a view)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert ref_sd["conv_in.weight"].data_ptr() == ours_sd["input_blocks.0.0.weight"].data_ptr()
    assert ref_sd["transformer_in.proj_in.weight"].data_ptr() == ours_sd["input_blocks.0.1.proj_in.weight"].data_ptr()
    n_params = sum(p.numel() for p in ours.parameters())
    built = time.perf_counter() - start

    x, t, c = inputs(cfg, 1, 2, 8, 8)
    with torch.no_grad():
        t0 = time.perf_counter()
        got = ours(x, t, c)
        t1 = time.perf_counter()
        want = ref(x, t, c).sample
        t2 = time.perf_counter()
    err = rel_l2(got, want)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"\nUNet3D ms-1.7b: {n_params / 1e9:.3f}B params; build+randomize {built:.1f}s; forward (1x2x8x8) ours "
        f"{t1 - t0:.2f}s, diffusers {t2 - t1:.2f}s; rel L2 {err:.2e}; peak RSS {rss_gb:.2f} GB"
    )
    assert 1.40e9 < n_params < 1.42e9
    assert err <= 1e-5
