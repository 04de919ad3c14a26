"""VAE encoder parity against diffusers' AutoencoderKL.encode (posterior mean and logvar) through the key map, the
key maps both ways, and the Lightning checkpoint filter."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from t2vrt.config.vae import VAE_PRESETS, VAEConfig
from t2vrt.models import vae_encoder_keys as keys
from t2vrt.models import vae_keys
from t2vrt.models.random_init import randomize_
from t2vrt.models.vae_encoder import VAEEncoder

TINY = VAE_PRESETS["tiny"]


def rel_l2(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a - b).norm() / b.norm())


def reference(cfg: VAEConfig, seed: int) -> AutoencoderKL:
    return randomize_(AutoencoderKL.from_config(vae_keys.config_to_diffusers(cfg)).eval(), seed=seed)


def ours_from_diffusers(ref: AutoencoderKL, cfg: VAEConfig) -> VAEEncoder:
    with torch.device("meta"):
        enc = VAEEncoder(cfg).eval()
    enc.load_state_dict(keys.diffusers_to_original(ref.state_dict(), cfg), strict=True, assign=True)
    return enc


def _compare(enc: VAEEncoder, ref: AutoencoderKL, x: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        mean, logvar = enc(x)
        post = ref.encode(x).latent_dist
    assert mean.shape == post.mean.shape and logvar.shape == post.logvar.shape
    return rel_l2(mean, post.mean), rel_l2(logvar, post.logvar)


def test_tiny_matches_diffusers_encode():
    ref = reference(TINY, seed=1)
    enc = ours_from_diffusers(ref, TINY)
    x = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1  # images in [-1, 1]
    err_mean, err_logvar = _compare(enc, ref, x)
    n = sum(p.numel() for p in enc.parameters())
    print(
        f"\ntiny VAE encoder ({n:,} params) vs diffusers AutoencoderKL.encode, x (3,3,40,56): "
        f"rel L2 mean {err_mean:.2e}, logvar {err_logvar:.2e}"
    )
    with torch.no_grad():
        mean, logvar = enc(x)
    assert mean.shape == (3, 4, 5, 7)
    assert err_mean <= 1e-5 and err_logvar <= 1e-5
    assert mean.std() > 1e-2 and logvar.std() > 1e-2  # not two constant tensors


def test_logvar_is_clamped_like_the_posterior():
    """Large weights push logvar past [-30, 20]: ours clamps where diffusers' DiagonalGaussianDistribution does."""
    ref = reference(TINY, seed=2)
    with torch.no_grad():
        ref.quant_conv.bias[4:] = torch.tensor([40.0, -50.0, 0.0, 0.0])  # the logvar half
    enc = ours_from_diffusers(ref, TINY)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        _, logvar = enc(x)
        want = ref.encode(x).latent_dist.logvar
    assert logvar[:, 0].max() == 20.0 and logvar[:, 1].min() == -30.0
    assert torch.allclose(logvar, want, rtol=1e-5, atol=1e-5)


def test_frames_are_independent():
    """Encoding a batch equals encoding each frame alone (chunking changes memory only)."""
    enc = randomize_(VAEEncoder(TINY).eval(), seed=3)
    x = torch.rand(4, 3, 24, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        whole = enc(x)[0]
        parts = torch.cat([enc(x[i : i + 1])[0] for i in range(4)])
    assert rel_l2(parts, whole) <= 1e-5  # float reassociation only


def test_diffusers_key_map_both_ways():
    ref_sd = reference(TINY, seed=4).state_dict()
    ours = randomize_(VAEEncoder(TINY), seed=5).state_dict()
    keys.check_state(ours, TINY)
    to_diff = keys.original_to_diffusers(ours, TINY)
    encoder_side = {k for k in ref_sd if k.startswith(("encoder.", "quant_conv."))}
    assert set(to_diff) == encoder_side
    assert all(to_diff[k].shape == ref_sd[k].shape for k in to_diff)
    assert to_diff["encoder.mid_block.attentions.0.to_q.weight"].ndim == 2
    # the encoder keeps LDM's level order: down.0 (full size) is diffusers' down_blocks.0
    assert torch.equal(
        to_diff["encoder.down_blocks.0.resnets.0.conv1.weight"], ours["encoder.down.0.block.0.conv1.weight"]
    )
    assert torch.equal(
        to_diff["encoder.down_blocks.0.downsamplers.0.conv.weight"], ours["encoder.down.0.downsample.conv.weight"]
    )
    back = keys.diffusers_to_original(to_diff, TINY)
    assert list(back) == list(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    # a full AutoencoderKL (decoder included) maps too; the decoder side is ignored
    assert set(keys.diffusers_to_original(ref_sd, TINY)) == set(ours)
    legacy = {k.replace("to_k.", "key.").replace("to_out.0.", "proj_attn."): v for k, v in to_diff.items()}
    assert "encoder.mid_block.attentions.0.key.weight" in legacy
    back = keys.diffusers_to_original(legacy, TINY)
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    with pytest.raises(KeyError, match="twice"):
        keys.diffusers_to_original(
            dict(to_diff, **{"encoder.mid_block.attentions.0.query.bias": torch.zeros(64)}), TINY
        )
    with pytest.raises(KeyError, match="down_blocks.9"):
        keys.diffusers_to_original(
            dict(to_diff, **{"encoder.down_blocks.9.resnets.0.conv1.bias": torch.zeros(1)}), TINY
        )
    missing = dict(to_diff)
    del missing["quant_conv.bias"]
    with pytest.raises(KeyError, match="quant_conv.bias"):
        keys.diffusers_to_original(missing, TINY)
    with pytest.raises(KeyError, match="decoder.conv_in"):
        keys.original_to_diffusers(dict(ours, **{"decoder.conv_in.weight": torch.zeros(1)}), TINY)
    bad = dict(ours, **{"quant_conv.weight": torch.zeros(8, 8, 3, 3)})
    with pytest.raises(ValueError, match="quant_conv.weight"):
        keys.check_state(bad, TINY)


def test_lightning_to_ours():
    """The encoder half of a Lightning autoencoder checkpoint; the decoder half and unrelated models are skipped."""
    ref = reference(TINY, seed=6)
    enc = keys.diffusers_to_original(ref.state_dict(), TINY)
    dec = vae_keys.diffusers_to_original(ref.state_dict(), TINY)
    fake = {f"first_stage_model.{k}": v for k, v in {**enc, **dec}.items()}
    fake["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)
    for ckpt in (fake, {"state_dict": fake, "epoch": 3}):
        got = keys.lightning_to_ours(ckpt)
        assert list(got) == list(enc)
        keys.check_state(got, TINY)
        assert list(vae_keys.lightning_to_ours(ckpt)) == list(dec)  # the decoder filter still takes its half
    with pytest.raises(KeyError, match="first_stage_model.loss.logvar"):
        keys.lightning_to_ours(dict(fake, **{"first_stage_model.loss.logvar": torch.zeros(1)}))
    with pytest.raises(KeyError, match="not an LDM autoencoder"):
        keys.lightning_to_ours({f"first_stage_model.{k}": v for k, v in dec.items()})


def test_config_fields_are_honoured():
    """A non-SD shape (3 levels, 8 groups, 16 latent channels, 1 input channel, 3 blocks) still matches."""
    cfg = VAEConfig(ch=16, ch_mult=(1, 2, 3), num_res_blocks=3, z_channels=16, embed_dim=16, out_ch=1, norm_groups=8)
    ref = reference(cfg, seed=7)
    enc = ours_from_diffusers(ref, cfg)
    x = torch.rand(2, 1, 12, 20, generator=torch.Generator().manual_seed(3)) * 2 - 1
    err_mean, err_logvar = _compare(enc, ref, x)
    assert enc(x)[0].shape == (2, 16, 3, 5)
    assert err_mean <= 1e-5 and err_logvar <= 1e-5


def test_full_encoder_matches_diffusers():
    """The real SD KL-f8 encoder shape (34.2M params) at a 64x48 image."""
    start = time.perf_counter()
    cfg = VAE_PRESETS["ms-1.7b"]
    ref = reference(cfg, seed=8)
    enc = ours_from_diffusers(ref, cfg)
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(4)) * 2 - 1
    err_mean, err_logvar = _compare(enc, ref, x)
    n = sum(p.numel() for p in enc.parameters())
    print(
        f"\nfull VAE encoder ({n:,} params) vs diffusers, x (2,3,64,48): rel L2 mean {err_mean:.2e}, "
        f"logvar {err_logvar:.2e}; {time.perf_counter() - start:.1f} s"
    )
    assert enc(x)[0].shape == (2, 4, 8, 6)
    assert err_mean <= 1e-5 and err_logvar <= 1e-5
