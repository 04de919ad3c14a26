"""VAE encoder key maps: diffusers' AutoencoderKL and the original Lightning checkpoint onto ours (LDM names).

The encoder-side twin of vae_keys.py. Unlike the decoder, diffusers keeps LDM's level order for the encoder
(down_blocks.{i} is LDM's down.{i}); the mid attention projections are again Linear [c, c] in diffusers where LDM
has 1x1 convs [c, c, 1, 1]. Unknown or missing keys raise KeyError naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from t2vrt.config.vae import VAEConfig
from t2vrt.models.rename import rename
from t2vrt.models.state_check import check_shapes
from t2vrt.models.vae_keys import _current_attn_name, _resnet_shapes, _to_conv, _to_linear, lightning_side

Tensor = torch.Tensor
_DECODER_SIDE = ("decoder.", "post_quant_conv.")  # parts of a full autoencoder that encoding never reads
_MID_ATTN = "encoder.mid_block.attentions.0."


def expected_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Our state dict's keys (VAEEncoder.state_dict() order) and shapes."""
    chans = [cfg.ch * m for m in cfg.ch_mult]
    top = chans[-1]
    out: dict[str, tuple[int, ...]] = {
        "encoder.conv_in.weight": (chans[0], cfg.out_ch, 3, 3),
        "encoder.conv_in.bias": (chans[0],),
    }
    for i, cout in enumerate(chans):
        cin = chans[i - 1] if i > 0 else chans[0]
        for j in range(cfg.num_res_blocks):
            out.update(_resnet_shapes(f"encoder.down.{i}.block.{j}.", cin if j == 0 else cout, cout))
        if i != len(chans) - 1:
            out[f"encoder.down.{i}.downsample.conv.weight"] = (cout, cout, 3, 3)
            out[f"encoder.down.{i}.downsample.conv.bias"] = (cout,)
    out.update(_resnet_shapes("encoder.mid.block_1.", top, top))
    out["encoder.mid.attn_1.norm.weight"] = (top,)
    out["encoder.mid.attn_1.norm.bias"] = (top,)
    for name in ("q", "k", "v", "proj_out"):
        out[f"encoder.mid.attn_1.{name}.weight"] = (top, top, 1, 1)
        out[f"encoder.mid.attn_1.{name}.bias"] = (top,)
    out.update(_resnet_shapes("encoder.mid.block_2.", top, top))
    out["encoder.norm_out.weight"] = (top,)
    out["encoder.norm_out.bias"] = (top,)
    out["encoder.conv_out.weight"] = (2 * cfg.z_channels, top, 3, 3)
    out["encoder.conv_out.bias"] = (2 * cfg.z_channels,)
    out["quant_conv.weight"] = (2 * cfg.embed_dim, 2 * cfg.z_channels, 1, 1)
    out["quant_conv.bias"] = (2 * cfg.embed_dim,)
    return out


def check_state(sd: Mapping[str, Tensor], cfg: VAEConfig) -> None:
    """Exact key set and shapes of our layout; raises KeyError / ValueError naming the first mismatch."""
    check_shapes(sd, expected_shapes(cfg), "VAE encoder")


def _diffusers_name(key: str) -> str:
    """One of our keys -> its diffusers AutoencoderKL name."""
    parts = key.split(".")
    if parts[0] == "quant_conv" or parts[1] in ("conv_in", "conv_out"):
        return key
    if parts[1] == "norm_out":
        return "encoder.conv_norm_out." + parts[2]
    if parts[1] == "mid":
        if parts[2].startswith("block_"):
            idx = int(parts[2][len("block_") :]) - 1
            return f"encoder.mid_block.resnets.{idx}." + ".".join(parts[3:])
        attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[parts[3]]
        return f"{_MID_ATTN}{attn}.{parts[4]}"
    # encoder.down.{i}.block.{j}.{layer}.{param} | encoder.down.{i}.downsample.conv.{param}
    block = f"encoder.down_blocks.{parts[2]}."
    if parts[3] == "downsample":
        return block + "downsamplers.0.conv." + parts[5]
    layer = "conv_shortcut" if parts[5] == "nin_shortcut" else parts[5]
    return block + f"resnets.{parts[4]}.{layer}.{parts[6]}"


def _diffusers_names(cfg: VAEConfig) -> dict[str, str]:
    return {k: _diffusers_name(k) for k in expected_shapes(cfg)}


def diffusers_to_original(sd: Mapping[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """AutoencoderKL state dict -> ours (encoder + quant_conv; the decoder side is ignored)."""
    inverse = {theirs: ours for ours, theirs in _diffusers_names(cfg).items()}
    return rename(sd, inverse, "AutoencoderKL", skip=_DECODER_SIDE, alias=_current_attn_name, convert=_to_conv)


def original_to_diffusers(sd: Mapping[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """Ours -> AutoencoderKL names (encoder + quant_conv only)."""
    return rename(sd, _diffusers_names(cfg), "VAE encoder", convert=_to_linear)


def lightning_to_ours(state_dict: Mapping[str, Tensor], cfg: VAEConfig | None = None) -> dict[str, Tensor]:
    """The encoder side (encoder.* and quant_conv.*) of the original VQGAN_autoencoder.pth."""
    return lightning_side(state_dict, ("encoder.", "quant_conv."), _DECODER_SIDE)
