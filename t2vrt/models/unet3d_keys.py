"""UNet3D configs and state dicts: the original ModelScope layout <-> diffusers' UNet3DConditionModel.

One explicit key map, generated from the config by walking the same layout the model is built from
(`unet_layout`): every original key is paired with exactly one diffusers key. The only layout difference is the
temporal transformers' proj_in / proj_out: Conv1d [out, in, 1] in the original, Linear [out, in] in diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from t2vrt.config.unet import LayerSpec, UNet3DConfig, unet_layout
from t2vrt.errors import T2VError
from t2vrt.models.rename import rename

WB = ("weight", "bias")
_RES = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
)
_TEMP_CONV = ("conv1.0", "conv1.2", "conv2.0", "conv2.3", "conv3.0", "conv3.3", "conv4.0", "conv4.3")
_ATTN = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")
_BLOCK = tuple(  # one transformer block, in module order
    [f"attn1.{n}" for n in _ATTN]
    + [f"ff.net.{n}.{w}" for n in ("0.proj", "2") for w in WB]
    + [f"attn2.{n}" for n in _ATTN]
    + [f"norm{i}.{w}" for i in (1, 2, 3) for w in WB]
)
_TRANSFORMER = (
    ("norm.weight", "norm.bias", "proj_in.weight", "proj_in.bias")
    + tuple(f"transformer_blocks.0.{n}" for n in _BLOCK)
    + ("proj_out.weight", "proj_out.bias")
)
_CONV1D = ("proj_in.weight", "proj_out.weight")  # Conv1d in the original's temporal transformers, Linear in diffusers

# (original key, diffusers key, reshape): reshape marks a Conv1d [o, i, 1] <-> Linear [o, i] weight.
KeyPair = tuple[str, str, bool]


def _pairs(orig: str, diff: str, names: tuple[str, ...] | list[str]) -> list[KeyPair]:
    return [(f"{orig}.{n}", f"{diff}.{n}", False) for n in names]


def _diffusers_block(spec: LayerSpec, cfg: UNet3DConfig, section: str) -> str:
    if spec.level == -1:
        return "mid_block"
    if section == "input_blocks":
        return f"down_blocks.{spec.level}"
    return f"up_blocks.{len(cfg.channel_mult) - 1 - spec.level}"


def _layer_pairs(orig: str, spec: LayerSpec, cfg: UNet3DConfig, section: str) -> list[KeyPair]:
    blk = _diffusers_block(spec, cfg, section)
    if spec.kind == "conv_in":
        return _pairs(orig, "conv_in", WB)
    if spec.kind == "down":
        return _pairs(orig + ".op", f"{blk}.downsamplers.0.conv", WB)
    if spec.kind == "up":
        return _pairs(orig + ".conv", f"{blk}.upsamplers.0.conv", WB)
    if spec.kind == "res":
        res = f"{blk}.resnets.{spec.index}"
        out = [(f"{orig}.{o}.{w}", f"{res}.{d}.{w}", False) for o, d in _RES for w in WB]
        if spec.in_channels != spec.channels:
            out += _pairs(orig + ".skip_connection", res + ".conv_shortcut", WB)
        temp_conv = [f"{c}.{w}" for c in _TEMP_CONV for w in WB]
        return out + _pairs(orig + ".temopral_conv", f"{blk}.temp_convs.{spec.index}", temp_conv)
    if spec.kind == "spatial":
        return _pairs(orig, f"{blk}.attentions.{spec.index}", _TRANSFORMER)
    if spec.kind == "temporal":
        diff = f"{blk}.temp_attentions.{spec.index}" if orig != "input_blocks.0.1" else "transformer_in"
        return [(f"{orig}.{n}", f"{diff}.{n}", n in _CONV1D) for n in _TRANSFORMER]
    raise ValueError(f"unknown layer kind {spec.kind!r}")


def key_pairs(cfg: UNet3DConfig) -> list[KeyPair]:
    """Every (original key, diffusers key, reshape) of a UNet with this config, in the original's order."""
    config_to_diffusers(cfg)  # raises if diffusers cannot represent it
    pairs: list[KeyPair] = [
        (f"time_embed.{i}.{w}", f"time_embedding.linear_{n}.{w}", False) for i, n in ((0, 1), (2, 2)) for w in WB
    ]
    layout = unet_layout(cfg)
    for section in ("input_blocks", "middle_block", "output_blocks"):
        for k, block in enumerate(layout[section]):
            base = section if section == "middle_block" else f"{section}.{k}"
            for n, spec in enumerate(block):
                orig = base if spec.kind == "down" else f"{base}.{n}"
                pairs += _layer_pairs(orig, spec, cfg, section)
    pairs += _pairs("out.0", "conv_norm_out", WB) + _pairs("out.2", "conv_out", WB)
    return pairs


def _convert(sd: Mapping[str, torch.Tensor], pairs: list[KeyPair], to_diffusers: bool) -> dict[str, torch.Tensor]:
    names = {(o if to_diffusers else d): (d if to_diffusers else o) for o, d, _ in pairs}
    squeezed = {(d if to_diffusers else o) for o, d, reshape in pairs if reshape}  # temporal conv weights

    def convert(key: str, v: torch.Tensor) -> torch.Tensor:
        if key not in squeezed:
            return v
        return v[..., 0] if to_diffusers else v[..., None]

    layout = "original" if to_diffusers else "diffusers"
    return rename(sd, names, f"UNet ({layout} layout)", convert=convert)


def original_to_diffusers(sd: Mapping[str, torch.Tensor], cfg: UNet3DConfig) -> dict[str, torch.Tensor]:
    return _convert(sd, key_pairs(cfg), to_diffusers=True)


def diffusers_to_original(sd: Mapping[str, torch.Tensor], cfg: UNet3DConfig) -> dict[str, torch.Tensor]:
    return _convert(sd, key_pairs(cfg), to_diffusers=False)


def original_names(sd: Mapping[str, torch.Tensor], cfg: UNet3DConfig) -> dict[str, torch.Tensor]:
    """The original release's UNet keys are our module names: nothing to rename (the loader checks every key)."""
    return dict(sd)


# ---- configs ----


def _truthy(value: object) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() == "true"


def config_from_original(model_cfg: Mapping) -> UNet3DConfig:
    """From configuration.json's "model_cfg" (temporal_attention is the string "True" there)."""
    return UNet3DConfig(
        in_channels=int(model_cfg["unet_in_dim"]),
        out_channels=int(model_cfg["unet_out_dim"]),
        model_channels=int(model_cfg["unet_dim"]),
        channel_mult=tuple(int(m) for m in model_cfg["unet_dim_mult"]),
        num_res_blocks=int(model_cfg["unet_res_blocks"]),
        attn_scales=tuple(float(s) for s in model_cfg["unet_attn_scales"]),
        head_dim=int(model_cfg["unet_head_dim"]),
        num_heads=int(model_cfg["unet_num_heads"]),
        context_dim=int(model_cfg["unet_context_dim"]),
        norm_groups=32,  # hard-coded in the original
        temporal_attention=_truthy(model_cfg.get("temporal_attention", True)),
    )


_DOWN_ATTN, _DOWN_PLAIN = "CrossAttnDownBlock3D", "DownBlock3D"
_UP_ATTN, _UP_PLAIN = "CrossAttnUpBlock3D", "UpBlock3D"


def config_to_diffusers(cfg: UNet3DConfig) -> dict:
    """A diffusers UNet3DConditionModel config (constructor kwargs) for this UNet; T2VError if it has no equivalent.

    Naming quirk: diffusers' `attention_head_dim` reaches its blocks as their head COUNT argument, and each block
    then uses channels // that many heads of that size: net effect heads = channels // attention_head_dim with
    head size attention_head_dim, as in the original. So attention_head_dim = head_dim.
    """
    levels = len(cfg.channel_mult)
    problems = []
    if cfg.channel_mult[0] != 1:
        problems.append(f"channel_mult[0] = {cfg.channel_mult[0]} (diffusers needs 1: conv_in outputs level 0's width)")
    if cfg.num_heads != 8:
        problems.append(f"num_heads = {cfg.num_heads} (diffusers' transformer_in has 8 heads)")
    if not cfg.temporal_attention:
        problems.append("temporal_attention = False (diffusers always has temporal transformers)")
    extra = [s for s in cfg.attn_scales if s not in [0.5**i for i in range(levels)]]
    if extra:
        problems.append(f"attn_scales {extra} match no level (levels have scales {[0.5**i for i in range(levels)]})")
    if problems:
        raise T2VError("UNet config has no diffusers equivalent: " + "; ".join(problems))
    attn = [0.5**i in cfg.attn_scales for i in range(levels)]
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": [_DOWN_ATTN if a else _DOWN_PLAIN for a in attn],
        "up_block_types": [_UP_ATTN if a else _UP_PLAIN for a in reversed(attn)],
        "block_out_channels": [cfg.model_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": cfg.norm_groups,
        "norm_eps": 1e-5,
        "cross_attention_dim": cfg.context_dim,
        "attention_head_dim": cfg.head_dim,
    }


def config_from_diffusers(cfg: Mapping) -> UNet3DConfig:
    """From a diffusers unet/config.json (UNet3DConditionModel); T2VError for what the original cannot express."""
    channels = [int(c) for c in cfg.get("block_out_channels", (320, 640, 1280, 1280))]
    down = list(cfg.get("down_block_types", [_DOWN_ATTN] * (len(channels) - 1) + [_DOWN_PLAIN]))
    up = list(cfg.get("up_block_types", [_UP_PLAIN] + [_UP_ATTN] * (len(channels) - 1)))
    head_dim = cfg.get("attention_head_dim", 64)
    if isinstance(head_dim, (list, tuple)):
        if len(set(head_dim)) != 1:
            raise T2VError(f"attention_head_dim {list(head_dim)}: per-level head sizes are not supported")
        head_dim = head_dim[0]
    if any(c % channels[0] for c in channels):
        raise T2VError(f"block_out_channels {channels} are not multiples of the first")
    attn = [t == _DOWN_ATTN for t in down]
    expected_up = [_UP_ATTN if a else _UP_PLAIN for a in reversed(attn)]
    checks = {
        "down_block_types": (all(t in (_DOWN_ATTN, _DOWN_PLAIN) for t in down) and len(down) == len(channels), down),
        "up_block_types": (up == expected_up, up),
        "act_fn": (cfg.get("act_fn", "silu") == "silu", cfg.get("act_fn")),
        "norm_eps": (float(cfg.get("norm_eps", 1e-5)) == 1e-5, cfg.get("norm_eps")),
        "downsample_padding": (int(cfg.get("downsample_padding", 1)) == 1, cfg.get("downsample_padding")),
        "mid_block_scale_factor": (float(cfg.get("mid_block_scale_factor", 1)) == 1, cfg.get("mid_block_scale_factor")),
        "num_attention_heads": (cfg.get("num_attention_heads") is None, cfg.get("num_attention_heads")),
        "time_cond_proj_dim": (cfg.get("time_cond_proj_dim") is None, cfg.get("time_cond_proj_dim")),
    }
    for name, (ok, value) in checks.items():
        if not ok:
            raise T2VError(f"diffusers UNet config {name} = {value!r} is not supported by the ModelScope UNet3D")
    return UNet3DConfig(
        in_channels=int(cfg.get("in_channels", 4)),
        out_channels=int(cfg.get("out_channels", 4)),
        model_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=int(cfg.get("layers_per_block", 2)),
        attn_scales=tuple(0.5**i for i, a in enumerate(attn) if a),
        head_dim=int(head_dim),
        num_heads=8,  # diffusers' transformer_in: 8 heads of attention_head_dim
        context_dim=int(cfg.get("cross_attention_dim", 1024)),
        norm_groups=int(cfg.get("norm_num_groups", 32)),
        temporal_attention=True,
    )
