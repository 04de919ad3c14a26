"""VAE decoder parity against diffusers' AutoencoderKL.decode through the key map, the key maps, the Lightning
checkpoint filter, config conversion, and the ONNX export."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from t2vrt.config.vae import VAE_PRESETS, VAEConfig
from t2vrt.errors import UsageError
from t2vrt.iospec import vae_decoder_spec
from t2vrt.models import vae_keys as keys
from t2vrt.models.random_init import randomize_
from t2vrt.models.vae import VAEDecoder

TINY = VAE_PRESETS["tiny"]
# damo-vilab/text-to-video-ms-1.7b vae/config.json as published (diffusers 0.15), plus the fields newer
# diffusers versions write with their defaults (as in the re-saved copies of the same model).
MS17_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.15.0.dev0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
MS17_VAE_CONFIG_NEW = dict(
    MS17_VAE_CONFIG,
    force_upcast=True,
    latents_mean=None,
    latents_std=None,
    shift_factor=None,
    use_post_quant_conv=True,
    use_quant_conv=True,
    mid_block_add_attention=True,
)


def rel_l2(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a - b).norm() / b.norm())


def reference(cfg: VAEConfig, seed: int) -> AutoencoderKL:
    return randomize_(AutoencoderKL.from_config(keys.config_to_diffusers(cfg)).eval(), seed=seed)


def ours_from_diffusers(ref: AutoencoderKL, cfg: VAEConfig) -> VAEDecoder:
    dec = VAEDecoder(cfg).eval()
    dec.load_state_dict(keys.diffusers_to_original(ref.state_dict(), cfg), strict=True)
    return dec


def test_tiny_matches_diffusers_decode():
    ref = reference(TINY, seed=1)
    dec = ours_from_diffusers(ref, TINY)
    z = torch.randn(3, 4, 5, 7, generator=torch.Generator().manual_seed(0))  # as sampled: still scaled
    with torch.no_grad():
        ours = dec(z)
        want = ref.decode(z / TINY.scaling_factor).sample
    err = rel_l2(ours, want)
    n = sum(p.numel() for p in dec.parameters())
    print(f"\ntiny VAE decoder ({n:,} params) vs diffusers AutoencoderKL.decode, z (3,4,5,7): rel L2 {err:.2e}")
    assert ours.shape == (3, 3, 40, 56)
    assert err <= 1e-5
    with torch.no_grad():
        big = dec(z * 50)
    assert big.abs().max() > 1.0  # nothing clamps to [-1, 1] inside


def test_mid_attention_is_used():
    """Zeroing the mid attention's output projection changes the image: the attention path is live."""
    dec = randomize_(VAEDecoder(TINY).eval(), seed=2)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = dec(z)
        dec.decoder.mid.attn_1.proj_out.weight.zero_()
        dec.decoder.mid.attn_1.proj_out.bias.zero_()
        assert rel_l2(dec(z), base) > 1e-3


def test_diffusers_key_map_both_ways():
    ref_sd = reference(TINY, seed=3).state_dict()
    ours = randomize_(VAEDecoder(TINY), seed=4).state_dict()
    to_diff = keys.original_to_diffusers(ours, TINY)
    decoder_side = {k for k in ref_sd if not k.startswith(("encoder.", "quant_conv."))}
    assert set(to_diff) == decoder_side
    assert all(to_diff[k].shape == ref_sd[k].shape for k in to_diff)
    assert to_diff["decoder.mid_block.attentions.0.to_q.weight"].ndim == 2
    # level order is reversed: LDM up.0 (full size, ch) is diffusers' last up block
    last = len(TINY.ch_mult) - 1
    top_level = to_diff[f"decoder.up_blocks.{last}.resnets.0.conv1.weight"]
    assert torch.equal(top_level, ours["decoder.up.0.block.0.conv1.weight"])
    back = keys.diffusers_to_original(to_diff, TINY)
    assert list(back) == list(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    keys.check_state(back, TINY)
    # a full AutoencoderKL (encoder included) maps too; the encoder side is ignored
    assert set(keys.diffusers_to_original(ref_sd, TINY)) == set(ours)
    # legacy (diffusers < 0.14) attention names are accepted
    legacy = {k.replace("to_q.", "query.").replace("to_out.0.", "proj_attn."): v for k, v in to_diff.items()}
    assert "decoder.mid_block.attentions.0.query.weight" in legacy
    back = keys.diffusers_to_original(legacy, TINY)
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    with pytest.raises(KeyError, match="twice"):
        dup = {"decoder.mid_block.attentions.0.query.bias": torch.zeros(64)}
        keys.diffusers_to_original(dict(to_diff, **dup), TINY)
    with pytest.raises(KeyError, match="up_blocks.9"):
        keys.diffusers_to_original(dict(to_diff, **{"decoder.up_blocks.9.resnets.0.conv1.bias": torch.zeros(1)}), TINY)
    missing = dict(to_diff)
    del missing["decoder.up_blocks.1.upsamplers.0.conv.weight"]
    with pytest.raises(KeyError, match="upsamplers.0.conv.weight"):
        keys.diffusers_to_original(missing, TINY)
    with pytest.raises(KeyError, match="encoder.conv_in"):
        keys.original_to_diffusers(dict(ours, **{"encoder.conv_in.weight": torch.zeros(1)}), TINY)


def test_lightning_to_ours():
    ref = reference(TINY, seed=5)
    ours = keys.diffusers_to_original(ref.state_dict(), TINY)
    fake = {f"first_stage_model.{k}": v for k, v in ours.items()}
    fake.update(
        {
            "first_stage_model.encoder.conv_in.weight": torch.zeros(32, 3, 3, 3),
            "first_stage_model.encoder.down.0.block.0.norm1.weight": torch.zeros(32),
            "first_stage_model.quant_conv.weight": torch.zeros(8, 8, 1, 1),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
            "cond_stage_model.model.token_embedding.weight": torch.zeros(1),
        }
    )
    for ckpt in (fake, {"state_dict": fake, "epoch": 3, "global_step": 1000}):
        got = keys.lightning_to_ours(ckpt)
        assert list(got) == list(ours)
        keys.check_state(got, TINY)
    with pytest.raises(KeyError, match="first_stage_model.loss.logvar"):
        keys.lightning_to_ours(dict(fake, **{"first_stage_model.loss.logvar": torch.zeros(1)}))
    with pytest.raises(KeyError, match="not an LDM autoencoder"):
        keys.lightning_to_ours({"model.diffusion_model.x": torch.zeros(1)})


def test_config_conversion():
    assert keys.config_from_diffusers(MS17_VAE_CONFIG) == VAE_PRESETS["ms-1.7b"]
    assert keys.config_from_diffusers(MS17_VAE_CONFIG_NEW) == VAE_PRESETS["ms-1.7b"]
    ours = keys.config_to_diffusers(VAE_PRESETS["ms-1.7b"])
    assert {k: v for k, v in ours.items() if k in MS17_VAE_CONFIG_NEW} == {
        k: v for k, v in MS17_VAE_CONFIG_NEW.items() if not k.startswith("_") or k == "_class_name"
    }
    assert keys.config_from_diffusers(keys.config_to_diffusers(TINY)) == TINY
    with pytest.raises(UsageError, match="shift_factor"):
        keys.config_from_diffusers(dict(MS17_VAE_CONFIG, shift_factor=0.1159))
    with pytest.raises(ValueError, match="embed_dim"):
        keys.config_to_diffusers(VAEConfig(embed_dim=8))


def test_config_fields_are_honoured():
    """A non-SD shape (3 levels, 8 groups, 16 latent channels, 1 output channel, other scale) still matches."""
    cfg = VAEConfig(
        ch=16,
        ch_mult=(1, 2, 3),
        num_res_blocks=2,
        z_channels=16,
        embed_dim=16,
        out_ch=1,
        norm_groups=8,
        scaling_factor=0.5,
    )
    ref = reference(cfg, seed=6)
    dec = ours_from_diffusers(ref, cfg)
    z = torch.randn(2, 16, 3, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, want = dec(z), ref.decode(z / 0.5).sample
    assert ours.shape == (2, 1, 12, 20)
    assert rel_l2(ours, want) <= 1e-5
    # embed_dim != z_channels (LDM allows it; diffusers does not): post_quant_conv maps embed_dim -> z_channels
    odd = randomize_(VAEDecoder(VAEConfig(ch=32, ch_mult=(1, 2), z_channels=4, embed_dim=3)).eval(), seed=7)
    assert odd(torch.zeros(1, 3, 2, 2)).shape == (1, 3, 4, 4)
    keys.check_state(odd.state_dict(), odd.cfg)


def test_onnx_export_two_latent_sizes(tmp_path):
    import onnxruntime as ort

    dec = randomize_(VAEDecoder(TINY).eval(), seed=8)
    spec = vae_decoder_spec(TINY.z_channels, TINY.downscale, TINY.out_ch)
    path = tmp_path / "vae_decoder.onnx"
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        torch.onnx.export(
            dec,
            (torch.randn(2, 4, 4, 6, generator=gen),),
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=17,
            dynamo=False,
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 4, 6, 4), (3, 4, 5, 7)):
        z = torch.randn(*shape, generator=gen)
        (got,) = sess.run(None, {"latents": z.numpy()})
        with torch.no_grad():
            want = dec(z)
        err = rel_l2(got, want)
        print(f"\nVAE decoder ONNX (ORT CPU) latents {shape}: rel L2 {err:.2e}")
        dims = spec.bind({"latents": z})
        assert got.shape == spec.shapes(dims)["images"]
        assert err <= 1e-5


def test_full_decoder_matches_diffusers():
    """The real SD KL-f8 decoder shape (49.5M params) at an 8x6 latent."""
    start = time.perf_counter()
    cfg = VAE_PRESETS["ms-1.7b"]
    ref = reference(cfg, seed=9)
    with torch.device("meta"):
        dec = VAEDecoder(cfg).eval()
    dec.load_state_dict(keys.diffusers_to_original(ref.state_dict(), cfg), strict=True, assign=True)
    z = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, want = dec(z), ref.decode(z / cfg.scaling_factor).sample
    err = rel_l2(ours, want)
    n = sum(p.numel() for p in dec.parameters())
    print(
        f"\nfull VAE decoder ({n:,} params) vs diffusers, z (2,4,8,6): rel L2 {err:.2e}; "
        f"{time.perf_counter() - start:.1f} s"
    )
    assert ours.shape == (2, 3, 64, 48)
    assert err <= 1e-5
