"""VAE decoder key maps: diffusers' AutoencoderKL and the original Lightning checkpoint onto ours (LDM names).

One explicit table ours -> diffusers, built from the config. Two differences besides names: diffusers orders
up_blocks from the lowest resolution (LDM's up.{i} is level i, up.0 = full size), and its mid attention
projections are Linear [c, c] where LDM has 1x1 convs [c, c, 1, 1]. Unknown or missing keys raise KeyError.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from t2vrt.config.vae import VAEConfig
from t2vrt.errors import UsageError
from t2vrt.models.rename import KeyMapError, rename
from t2vrt.models.state_check import check_shapes

Tensor = torch.Tensor
_ENCODER_SIDE = ("encoder.", "quant_conv.")  # parts of a full autoencoder that decoding never reads
_LIGHTNING_PREFIX = "first_stage_model."
# diffusers < 0.14 named the attention projections differently; its loader still renames them, so do we.
_LEGACY_ATTN = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}
_MID_ATTN = "decoder.mid_block.attentions.0."


def _resnet_shapes(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    out = {
        prefix + "norm1.weight": (cin,),
        prefix + "norm1.bias": (cin,),
        prefix + "conv1.weight": (cout, cin, 3, 3),
        prefix + "conv1.bias": (cout,),
        prefix + "norm2.weight": (cout,),
        prefix + "norm2.bias": (cout,),
        prefix + "conv2.weight": (cout, cout, 3, 3),
        prefix + "conv2.bias": (cout,),
    }
    if cin != cout:
        out[prefix + "nin_shortcut.weight"] = (cout, cin, 1, 1)
        out[prefix + "nin_shortcut.bias"] = (cout,)
    return out


def expected_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Our state dict's keys (VAEDecoder.state_dict() order) and shapes."""
    chans = [cfg.ch * m for m in cfg.ch_mult]
    top = chans[-1]
    out: dict[str, tuple[int, ...]] = {
        "post_quant_conv.weight": (cfg.z_channels, cfg.embed_dim, 1, 1),
        "post_quant_conv.bias": (cfg.z_channels,),
        "decoder.conv_in.weight": (top, cfg.z_channels, 3, 3),
        "decoder.conv_in.bias": (top,),
    }
    out.update(_resnet_shapes("decoder.mid.block_1.", top, top))
    out["decoder.mid.attn_1.norm.weight"] = (top,)
    out["decoder.mid.attn_1.norm.bias"] = (top,)
    for name in ("q", "k", "v", "proj_out"):
        out[f"decoder.mid.attn_1.{name}.weight"] = (top, top, 1, 1)
        out[f"decoder.mid.attn_1.{name}.bias"] = (top,)
    out.update(_resnet_shapes("decoder.mid.block_2.", top, top))
    for i, cout in enumerate(chans):
        cin = chans[i + 1] if i + 1 < len(chans) else top
        for j in range(cfg.num_res_blocks + 1):
            out.update(_resnet_shapes(f"decoder.up.{i}.block.{j}.", cin if j == 0 else cout, cout))
        if i != 0:
            out[f"decoder.up.{i}.upsample.conv.weight"] = (cout, cout, 3, 3)
            out[f"decoder.up.{i}.upsample.conv.bias"] = (cout,)
    out["decoder.norm_out.weight"] = (chans[0],)
    out["decoder.norm_out.bias"] = (chans[0],)
    out["decoder.conv_out.weight"] = (cfg.out_ch, chans[0], 3, 3)
    out["decoder.conv_out.bias"] = (cfg.out_ch,)
    return out


def check_state(sd: Mapping[str, Tensor], cfg: VAEConfig) -> None:
    """Exact key set and shapes of our layout; raises KeyError / ValueError naming the first mismatch."""
    check_shapes(sd, expected_shapes(cfg), "VAE decoder")


def _diffusers_name(key: str, levels: int) -> str:
    """One of our keys -> its diffusers AutoencoderKL name."""
    parts = key.split(".")
    if parts[0] == "post_quant_conv" or parts[1] in ("conv_in", "conv_out"):
        return key
    if parts[1] == "norm_out":
        return "decoder.conv_norm_out." + parts[2]
    if parts[1] == "mid":
        if parts[2].startswith("block_"):
            idx = int(parts[2][len("block_") :]) - 1
            return f"decoder.mid_block.resnets.{idx}." + ".".join(parts[3:])
        attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[parts[3]]
        return f"{_MID_ATTN}{attn}.{parts[4]}"
    # decoder.up.{i}.block.{j}.{layer}.{param} | decoder.up.{i}.upsample.conv.{param}
    block = f"decoder.up_blocks.{levels - 1 - int(parts[2])}."
    if parts[3] == "upsample":
        return block + "upsamplers.0.conv." + parts[5]
    layer = "conv_shortcut" if parts[5] == "nin_shortcut" else parts[5]
    return block + f"resnets.{parts[4]}.{layer}.{parts[6]}"


def _diffusers_names(cfg: VAEConfig) -> dict[str, str]:
    return {k: _diffusers_name(k, len(cfg.ch_mult)) for k in expected_shapes(cfg)}


def _is_linear_in_diffusers(key: str) -> bool:
    """Our mid-attention q/k/v/proj_out weights (1x1 convs), which diffusers stores as Linear [c, c]."""
    return ".mid.attn_1." in key and key.endswith(".weight") and ".norm." not in key


def _current_attn_name(key: str) -> str:
    """diffusers' older mid-attention names (query, key, value, proj_attn) -> the current ones (to_q, ...)."""
    head, sep, rest = key.partition("mid_block.attentions.0.")
    for old, new in _LEGACY_ATTN.items():
        if sep and rest.startswith(old):
            return head + sep + new + rest[len(old) :]
    return key


def _to_conv(ours: str, v: Tensor) -> Tensor:
    return v[:, :, None, None] if _is_linear_in_diffusers(ours) and v.ndim == 2 else v


def _to_linear(theirs: str, v: Tensor) -> Tensor:
    attn = "mid_block.attentions.0." in theirs and theirs.endswith(".weight") and "group_norm" not in theirs
    return v.reshape(v.shape[0], v.shape[1]) if attn and v.ndim == 4 else v


def diffusers_to_original(sd: Mapping[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """AutoencoderKL state dict -> ours (decoder + post_quant_conv; the encoder side is ignored)."""
    inverse = {theirs: ours for ours, theirs in _diffusers_names(cfg).items()}
    return rename(sd, inverse, "AutoencoderKL", skip=_ENCODER_SIDE, alias=_current_attn_name, convert=_to_conv)


def original_to_diffusers(sd: Mapping[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """Ours -> AutoencoderKL names (decoder + post_quant_conv only)."""
    return rename(sd, _diffusers_names(cfg), "VAE decoder", convert=_to_linear)


def lightning_side(
    state_dict: Mapping[str, Tensor], keep: tuple[str, ...], other: tuple[str, ...]
) -> dict[str, Tensor]:
    """One side of the original VQGAN_autoencoder.pth (a Lightning checkpoint, or its ['state_dict']): the
    'first_stage_model.' keys starting with `keep`, prefix stripped; keys of the `other` side are skipped."""
    sd = state_dict.get("state_dict", state_dict)  # type: ignore[call-overload]
    if not isinstance(sd, Mapping):
        raise KeyMapError("checkpoint['state_dict'] is not a mapping of tensors")
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if not k.startswith(_LIGHTNING_PREFIX):
            continue
        k = k[len(_LIGHTNING_PREFIX) :]
        if k.startswith(keep):
            out[k] = v
        elif not k.startswith(other):
            raise KeyMapError(f"unexpected autoencoder key {_LIGHTNING_PREFIX + k!r}")
    if not out:
        raise KeyMapError(f"no '{_LIGHTNING_PREFIX}{keep[0]}*' keys in the checkpoint: not an LDM autoencoder")
    return out


def lightning_to_ours(state_dict: Mapping[str, Tensor], cfg: VAEConfig | None = None) -> dict[str, Tensor]:
    """The decoder side (decoder.* and post_quant_conv.*) of the original VQGAN_autoencoder.pth."""
    return lightning_side(state_dict, ("decoder.", "post_quant_conv."), _ENCODER_SIDE)


def config_from_diffusers(d: Mapping) -> VAEConfig:
    """An AutoencoderKL config dict (vae/config.json) -> ours; refuses the variants the decoder does not build."""
    blocks = [int(c) for c in d["block_out_channels"]]
    checks = {
        "act_fn": (d.get("act_fn", "silu"), "silu"),
        "up_block_types": (list(d.get("up_block_types", [])), ["UpDecoderBlock2D"] * len(blocks)),
        "mid_block_add_attention": (d.get("mid_block_add_attention", True), True),
        "use_post_quant_conv": (d.get("use_post_quant_conv", True), True),
        "shift_factor": (d.get("shift_factor"), None),
    }
    for key, (got, want) in checks.items():
        if got != want:
            raise UsageError(f"VAE config: {key} = {got!r} is not supported (t2vrt needs {want!r})")
    if any(c % blocks[0] for c in blocks):
        raise UsageError(f"VAE config: block_out_channels {blocks} must be multiples of the first")
    return VAEConfig(
        ch=blocks[0],
        ch_mult=tuple(c // blocks[0] for c in blocks),
        num_res_blocks=int(d["layers_per_block"]),
        z_channels=int(d["latent_channels"]),
        embed_dim=int(d["latent_channels"]),
        out_ch=int(d["out_channels"]),
        norm_groups=int(d.get("norm_num_groups", 32)),
        scaling_factor=float(d.get("scaling_factor", 0.18215)),
    )


def config_to_diffusers(cfg: VAEConfig) -> dict:
    """Ours -> an AutoencoderKL config dict (the values of ms-1.7b's vae/config.json for the ms-1.7b preset)."""
    if cfg.z_channels != cfg.embed_dim:
        raise ValueError(f"AutoencoderKL has one latent size: z_channels {cfg.z_channels} != embed_dim {cfg.embed_dim}")
    n = len(cfg.ch_mult)
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "force_upcast": True,
        "in_channels": cfg.out_ch,
        "latent_channels": cfg.z_channels,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_add_attention": True,
        "norm_num_groups": cfg.norm_groups,
        "out_channels": cfg.out_ch,
        "sample_size": 512,
        "scaling_factor": cfg.scaling_factor,
        "shift_factor": None,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "use_post_quant_conv": True,
        "use_quant_conv": True,
    }
